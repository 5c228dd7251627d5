//! The demo mesh as data: three workloads, the policy between them, and
//! the flows that show it. Pure: addresses come from the caller, so the
//! same scenario runs in network-namespace pods and on loopback.

use std::net::SocketAddr;

use ward_config::TrustDomain;

pub const TRUST_DOMAIN: &str = "demo.ward";
pub const NAMESPACE: &str = "shop";

/// What a workload's app is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    /// A client only: it serves nothing.
    None,
    /// HTTP/1.1 on this port (declared `http` in the mesh file).
    Http(u16),
    /// A server-speaks-first TCP protocol on this port (declared `tcp`).
    Banner(u16),
}

impl App {
    pub fn port(self) -> Option<u16> {
        match self {
            Self::None => None,
            Self::Http(port) | Self::Banner(port) => Some(port),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Workload {
    pub name: &'static str,
    pub app: App,
}

pub const WORKLOADS: [Workload; 3] = [
    Workload {
        name: "web",
        app: App::None,
    },
    Workload {
        name: "orders",
        app: App::Http(8080),
    },
    Workload {
        name: "db",
        app: App::Banner(5432),
    },
];

pub fn workload(name: &str) -> Option<&'static Workload> {
    WORKLOADS.iter().find(|w| w.name == name)
}

pub fn identity(name: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{name}")
}

pub fn trust_domain() -> TrustDomain {
    TrustDomain::new(TRUST_DOMAIN).expect("a valid constant")
}

/// The mesh file: every serving workload with `endpoint(name)` as its one
/// endpoint, and the policy. In transparent mode the endpoint is the pod's
/// `ip:app-port`; in explicit mode the sidecar's inbound listener.
pub fn mesh_yaml(endpoint: impl Fn(&Workload) -> SocketAddr) -> String {
    let mut yaml = format!("trust_domain: {TRUST_DOMAIN}\nservices:\n");
    for w in &WORKLOADS {
        let (port, protocol) = match w.app {
            App::None => continue,
            App::Http(port) => (port, "http"),
            App::Banner(port) => (port, "tcp"),
        };
        yaml.push_str(&format!(
            "  {name}:\n    identity: {id}\n    endpoints: [\"{ep}\"]\n    ports: [{{port: {port}, protocol: {protocol}}}]\n",
            name = w.name,
            id = identity(w.name),
            ep = endpoint(w),
        ));
    }
    yaml.push_str(&format!(
        "roles:
  web: [{web}]
  orders: [{orders}]
allow:
  - name: web-reads-orders
    from: [web]
    to: orders
    http:
      methods: [GET]
      paths: [/orders, /orders/*]
  - name: orders-uses-db
    from: [orders]
    to: db
    ports: [5432]
deny:
  - name: web-never-db
    from: [web]
    to: db
",
        web = identity("web"),
        orders = identity("orders"),
    ));
    yaml
}

/// What a flow sends.
#[derive(Debug, Clone, Copy)]
pub enum Request {
    Http {
        method: &'static str,
        path: &'static str,
    },
    /// Read the greeting, send a line, read the echo.
    Talk(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Denied,
}

/// One call from a workload to a service, and what the policy says of it.
#[derive(Debug, Clone, Copy)]
pub struct Flow {
    pub from: &'static str,
    pub to: &'static str,
    pub request: Request,
    pub expect: Verdict,
    /// The rule that decides it (`default`: no rule allows it).
    pub rule: &'static str,
}

pub const FLOWS: [Flow; 4] = [
    Flow {
        from: "web",
        to: "orders",
        request: Request::Http {
            method: "GET",
            path: "/orders/42",
        },
        expect: Verdict::Allowed,
        rule: "web-reads-orders",
    },
    Flow {
        from: "web",
        to: "orders",
        request: Request::Http {
            method: "POST",
            path: "/orders",
        },
        expect: Verdict::Denied,
        rule: "default",
    },
    Flow {
        from: "orders",
        to: "db",
        request: Request::Talk("SELECT 1"),
        expect: Verdict::Allowed,
        rule: "orders-uses-db",
    },
    Flow {
        from: "web",
        to: "db",
        request: Request::Talk("SELECT 1"),
        expect: Verdict::Denied,
        rule: "web-never-db",
    },
];

impl Flow {
    pub fn describe(&self) -> String {
        match self.request {
            Request::Http { method, path } => {
                format!("{} -> {}: HTTP {method} {path}", self.from, self.to)
            }
            Request::Talk(_) => format!("{} -> {}: TCP (server speaks first)", self.from, self.to),
        }
    }

    /// The `ward demo-app` arguments that make this call to `addr`.
    pub fn client_args(&self, addr: SocketAddr) -> Vec<String> {
        match self.request {
            Request::Http { method, path } => vec![
                "request".into(),
                "--method".into(),
                method.into(),
                format!("http://{addr}{path}"),
            ],
            Request::Talk(line) => vec!["talk".into(), addr.to_string(), line.into()],
        }
    }

    /// Reads the client's one-line output: was the call let through?
    pub fn verdict(&self, output: &str) -> Verdict {
        let line = output.trim();
        let allowed = match self.request {
            Request::Http { .. } => line.starts_with('2'),
            Request::Talk(sent) => line.ends_with(&format!("| {sent}")),
        };
        if allowed {
            Verdict::Allowed
        } else {
            Verdict::Denied
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};
    use ward_config::policy::engine::{Engine, HttpRequest, Request as Call};
    use ward_config::{MeshConfig, SpiffeId};

    /// The policy in the mesh file decides every flow as the flow says:
    /// the demo's expectations agree with the engine, rule names included.
    #[test]
    fn policy_decides_each_flow_as_expected() {
        let endpoint = |w: &Workload| {
            SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                w.app.port().unwrap_or(1),
            )
        };
        let mesh = MeshConfig::parse(&mesh_yaml(endpoint), "demo.yaml").expect("valid mesh");
        let engine = Engine::compile(&mesh.policy, &mesh.services).expect("compiles");
        for flow in FLOWS {
            let from = SpiffeId::parse(&identity(flow.from)).expect("identity");
            let port = workload(flow.to)
                .and_then(|w| w.app.port())
                .expect("a served port");
            let http = match flow.request {
                Request::Http { method, path } => Some(HttpRequest { method, path }),
                Request::Talk(_) => None,
            };
            let decision = engine.decide(&Call {
                from: &from,
                service: flow.to,
                port,
                http,
            });
            let verdict = if decision.verdict.passes() {
                Verdict::Allowed
            } else {
                Verdict::Denied
            };
            let rule = decision.rule.map_or("default", |r| r.name.as_str());
            assert_eq!(
                (verdict, rule),
                (flow.expect, flow.rule),
                "{}",
                flow.describe()
            );
        }
    }

    #[test]
    fn reads_client_output() {
        let get = FLOWS[0];
        assert_eq!(get.verdict("200\n"), Verdict::Allowed);
        assert_eq!(get.verdict("403"), Verdict::Denied);
        assert_eq!(get.verdict("000 connection reset"), Verdict::Denied);
        let talk = FLOWS[2];
        assert_eq!(talk.verdict("db ready | SELECT 1\n"), Verdict::Allowed);
        assert_eq!(talk.verdict("closed: no greeting"), Verdict::Denied);
    }
}
