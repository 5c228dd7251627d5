use super::*;
use crate::test_support::authority;
use time::Duration as TimeDelta;

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

#[test]
fn round_trip_binds_one_identity() {
    let (_dir, ca) = authority("test.ward");
    let now = OffsetDateTime::now_utc();
    let (token, claims) = mint(
        &ca,
        &id("spiffe://test.ward/ns/a/sa/b"),
        Duration::from_secs(3600),
        now,
    )
    .unwrap();
    let auth = JoinTokens::new(&ca).verify(&token, now).unwrap();
    assert_eq!(auth.identity.as_str(), "spiffe://test.ward/ns/a/sa/b");
    assert_eq!(auth.credential_id, claims.jti);
    assert_eq!(claims.exp - claims.iat, 3600);
}

#[test]
fn expiry_and_clock_skew() {
    let (_dir, ca) = authority("test.ward");
    let now = OffsetDateTime::now_utc();
    let (token, _) = mint(
        &ca,
        &id("spiffe://test.ward/ns/a/sa/b"),
        Duration::from_secs(60),
        now,
    )
    .unwrap();
    let v = JoinTokens::new(&ca);
    assert!(matches!(
        v.verify(&token, now + TimeDelta::seconds(60)),
        Err(AuthError::Expired(_))
    ));
    assert_eq!(
        v.verify(&token, now - TimeDelta::minutes(10)),
        Err(AuthError::NotYetValid)
    );
    assert!(v.verify(&token, now - TimeDelta::minutes(1)).is_ok());
}

#[test]
fn another_ca_or_tampering_fails_signature() {
    let (_d1, ca) = authority("test.ward");
    let (_d2, other) = authority("test.ward");
    let now = OffsetDateTime::now_utc();
    let (token, _) = mint(
        &other,
        &id("spiffe://test.ward/ns/a/sa/b"),
        Duration::from_secs(60),
        now,
    )
    .unwrap();
    assert_eq!(
        JoinTokens::new(&ca).verify(&token, now),
        Err(AuthError::BadSignature)
    );

    let (good, _) = mint(
        &ca,
        &id("spiffe://test.ward/ns/a/sa/b"),
        Duration::from_secs(60),
        now,
    )
    .unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    let forged_claims = URL_SAFE_NO_PAD.encode(
        br#"{"sub":"spiffe://test.ward/ns/kube-system/sa/admin","iss":"test.ward","iat":0,"exp":99999999999,"jti":"x"}"#,
    );
    let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
    assert_eq!(
        JoinTokens::new(&ca).verify(&forged, now),
        Err(AuthError::BadSignature)
    );
}

#[test]
fn malformed_tokens_are_refused_before_crypto() {
    let (_dir, ca) = authority("test.ward");
    let v = JoinTokens::new(&ca);
    let now = OffsetDateTime::now_utc();
    for bad in [
        "",
        "ward1",
        "ward1.a",
        "ward1.a.b.c",
        "jwt.a.b",
        "ward1.a.!!!",
    ] {
        assert!(
            matches!(v.verify(bad, now), Err(AuthError::Malformed(_))),
            "{bad:?}"
        );
    }
    assert!(matches!(
        v.verify(&"a".repeat(5000), now),
        Err(AuthError::Malformed(_))
    ));
}

#[test]
fn mint_refuses_foreign_or_non_workload_identities() {
    let (_dir, ca) = authority("test.ward");
    let now = OffsetDateTime::now_utc();
    let ttl = Duration::from_secs(60);
    assert!(matches!(
        mint(&ca, &id("spiffe://other/ns/a/sa/b"), ttl, now),
        Err(MintError::ForeignIdentity(..))
    ));
    assert!(matches!(
        mint(&ca, &id("spiffe://test.ward/x"), ttl, now),
        Err(MintError::Identity(_))
    ));
    assert!(matches!(
        mint(
            &ca,
            &id("spiffe://test.ward/ns/a/sa/b"),
            Duration::ZERO,
            now
        ),
        Err(MintError::BadTtl)
    ));
}
