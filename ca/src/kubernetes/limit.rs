//! A token bucket per client IP for TokenReviews: one pod sending junk
//! tokens cannot spend the CA's share of the API server (whose priority and
//! fairness would then throttle the CA for every pod). Honest proxies ask
//! about twice a day, so the defaults never touch them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// How many reviews a client may ask for in a burst, and how fast the
/// allowance comes back.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub burst: u32,
    pub per_minute: u32,
}

/// Clients remembered at most; beyond it, idle (full) buckets are forgotten
/// first and, if all are busy, everything is (the global slot cap still
/// bounds the API calls).
const MAX_CLIENTS: usize = 16_384;

pub struct PerClient {
    rate: Rate,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl PerClient {
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one review from `client`'s allowance, if there is one.
    pub fn allow(&self, client: IpAddr, now: Instant) -> bool {
        let burst = f64::from(self.rate.burst);
        let per_sec = f64::from(self.rate.per_minute) / 60.0;
        let refill =
            |b: &Bucket| (b.tokens + now.duration_since(b.at).as_secs_f64() * per_sec).min(burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(&client) {
            buckets.retain(|_, b| refill(b) < burst);
            if buckets.len() >= MAX_CLIENTS {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.tokens = refill(bucket);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_then_the_refill_rate_per_client() {
        let limit = PerClient::new(Rate {
            burst: 3,
            per_minute: 60,
        });
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        assert!((0..3).all(|_| limit.allow(a, t0)));
        assert!(!limit.allow(a, t0), "the burst is spent");
        assert!(limit.allow(b, t0), "another client has its own bucket");
        assert!(!limit.allow(a, t0 + Duration::from_millis(500)));
        assert!(
            limit.allow(a, t0 + Duration::from_millis(1500)),
            "one per second comes back"
        );
        assert!(!limit.allow(a, t0 + Duration::from_millis(1600)));
        let later = t0 + Duration::from_secs(3600);
        assert!(
            (0..3).all(|_| limit.allow(a, later)),
            "refills up to the burst only"
        );
        assert!(!limit.allow(a, later));
    }

    #[test]
    fn memory_is_bounded_by_forgetting_idle_clients() {
        let limit = PerClient::new(Rate {
            burst: 2,
            per_minute: 60,
        });
        let t0 = Instant::now();
        for i in 0..MAX_CLIENTS as u32 + 10 {
            limit.allow(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(limit.buckets.lock().unwrap().len() <= MAX_CLIENTS);
    }
}
