//! Private keys at rest: PKCS#8 encrypted with PBES2 (scrypt + AES-256-CBC),
//! the format `openssl pkey` reads, so operators can inspect and back up keys
//! with standard tools. Plaintext keys are only written when the operator
//! asked for them explicitly.

use pkcs8::der::pem::LineEnding;
use pkcs8::pkcs5::{pbes2, scrypt};
use pkcs8::{EncryptedPrivateKeyInfo, PrivateKeyInfo};
use rcgen::KeyPair;
use zeroize::Zeroizing;

/// scrypt cost: N = 2^14, r = 8 (16 MiB per guess), OpenSSL's own default.
/// N = 2^15 would need just over OpenSSL's 32 MiB scrypt memory limit, and
/// `openssl pkey` could then no longer read the keys.
const SCRYPT_LOG_N: u8 = 14;

const ENCRYPTED_LABEL: &str = "ENCRYPTED PRIVATE KEY";
const PLAIN_LABEL: &str = "PRIVATE KEY";

/// A passphrase held in memory that is wiped on drop.
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Refuses empty passphrases; trailing newlines (from files and `echo`)
    /// are not part of the passphrase.
    pub fn new(text: String) -> Result<Self, KeyError> {
        let text = Zeroizing::new(text);
        let trimmed = text.trim_end_matches(['\r', '\n']);
        if trimmed.is_empty() {
            return Err(KeyError::EmptyPassphrase);
        }
        Ok(Self(Zeroizing::new(trimmed.to_string())))
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// What can go wrong reading or writing a key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the passphrase is empty: put a strong passphrase in the passphrase file")]
    EmptyPassphrase,
    #[error("cannot decrypt the key: the passphrase is wrong or the key file is corrupt")]
    WrongPassphrase,
    #[error(
        "the key is encrypted: give its passphrase with --passphrase-file or WARD_CA_PASSPHRASE"
    )]
    PassphraseRequired,
    #[error("not a PKCS#8 private key (expected a PEM block \"{ENCRYPTED_LABEL}\"): {0}")]
    Malformed(String),
    #[error("cannot use the key: {0}")]
    Unusable(#[from] rcgen::Error),
    #[error("cannot encrypt the key: {0}")]
    Encrypt(String),
}

/// Serializes `key` as PEM: encrypted under `passphrase`, or in the clear when
/// `passphrase` is `None` (the caller decides that only on explicit request).
pub fn seal(key: &KeyPair, passphrase: Option<&Passphrase>) -> Result<Zeroizing<String>, KeyError> {
    let Some(passphrase) = passphrase else {
        return Ok(Zeroizing::new(key.serialize_pem()));
    };
    let der = Zeroizing::new(key.serialize_der());
    let info =
        PrivateKeyInfo::try_from(der.as_slice()).map_err(|e| KeyError::Encrypt(e.to_string()))?;
    let mut salt = [0u8; 16];
    let mut iv = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| KeyError::Encrypt("no randomness".into()))?;
    aws_lc_rs::rand::fill(&mut iv).map_err(|_| KeyError::Encrypt("no randomness".into()))?;
    let cost = scrypt::Params::new(SCRYPT_LOG_N, 8, 1, 32)
        .map_err(|e| KeyError::Encrypt(e.to_string()))?;
    let params = pbes2::Parameters::scrypt_aes256cbc(cost, &salt, &iv)
        .map_err(|e| KeyError::Encrypt(e.to_string()))?;
    let doc = info
        .encrypt_with_params(params, passphrase.bytes())
        .map_err(|e| KeyError::Encrypt(e.to_string()))?;
    let pem = doc
        .to_pem(ENCRYPTED_LABEL, LineEnding::LF)
        .map_err(|e| KeyError::Encrypt(e.to_string()))?;
    Ok(pem)
}

/// Reads a PEM key written by [`seal`]. An encrypted key needs the passphrase;
/// a plaintext key is accepted without one.
pub fn open(pem: &str, passphrase: Option<&Passphrase>) -> Result<KeyPair, KeyError> {
    let (label, der) = pkcs8::der::pem::decode_vec(pem.as_bytes())
        .map_err(|e| KeyError::Malformed(e.to_string()))?;
    let der = Zeroizing::new(der);
    match label {
        PLAIN_LABEL => Ok(KeyPair::try_from(der.as_slice())?),
        ENCRYPTED_LABEL => {
            let passphrase = passphrase.ok_or(KeyError::PassphraseRequired)?;
            let info = EncryptedPrivateKeyInfo::try_from(der.as_slice())
                .map_err(|e| KeyError::Malformed(e.to_string()))?;
            let plain = info
                .decrypt(passphrase.bytes())
                .map_err(|_| KeyError::WrongPassphrase)?;
            // A wrong passphrase can decrypt to garbage with valid padding;
            // rcgen's parse then fails, which is the same user error.
            KeyPair::try_from(plain.as_bytes()).map_err(|_| KeyError::WrongPassphrase)
        }
        other => Err(KeyError::Malformed(format!(
            "unexpected PEM label {other:?}"
        ))),
    }
}

/// True when a PEM key file is stored in the clear.
pub fn is_plaintext(pem: &str) -> bool {
    pem.contains("-----BEGIN PRIVATE KEY-----")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(s.to_string()).unwrap()
    }

    #[test]
    fn encrypted_round_trip_and_wrong_passphrase() {
        let key = KeyPair::generate().unwrap();
        let pem = seal(&key, Some(&pass("correct horse\n"))).unwrap();
        assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
        assert!(!is_plaintext(&pem));
        let back = open(&pem, Some(&pass("correct horse"))).unwrap();
        assert_eq!(back.public_key_raw(), key.public_key_raw());
        assert!(matches!(
            open(&pem, Some(&pass("wrong"))),
            Err(KeyError::WrongPassphrase)
        ));
        assert!(matches!(
            open(&pem, None),
            Err(KeyError::PassphraseRequired)
        ));
    }

    #[test]
    fn plaintext_only_on_request_and_garbage_refused() {
        let key = KeyPair::generate().unwrap();
        let pem = seal(&key, None).unwrap();
        assert!(is_plaintext(&pem));
        assert!(open(&pem, None).is_ok());
        assert!(matches!(
            open("not a key", None),
            Err(KeyError::Malformed(_))
        ));
        assert!(matches!(
            Passphrase::new("\n".into()),
            Err(KeyError::EmptyPassphrase)
        ));
    }
}
