//! Security: the TLS adapter on the shard's link layer (`tls.rs`, the only file that names
//! rustls), node identity in certificates (`identity.rs`) and the security modes that say what
//! a node accepts and dials, the shared secret of AUTH and its MAC (`auth.rs`), and per-peer
//! rate limits (`rate.rs`).
//!
//! Must never depend on `shard`, `route` or `api`: like `proto`, it takes bytes from the caller
//! and hands bytes back; the shard moves them between the ring and proto.

use std::path::PathBuf;

pub(crate) mod auth;
pub(crate) mod identity;
pub(crate) mod rate;
pub(crate) mod tls;

pub use auth::AuthToken;
pub use rate::RateLimit;

/// TLS 1.3 for every connection of an engine, from PEM files (see docs/security.md).
///
/// Both sides present a certificate from `cert_path` (with its chain) and `key_path`, and
/// verify the other's chain against the CA certificates in `ca_cert_path`. Files made by
/// `openssl req`/`openssl x509` work: certificates as `CERTIFICATE` blocks, the key as PKCS#8,
/// PKCS#1 (RSA) or SEC1 (EC).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsConfig {
    /// This node's certificate chain, leaf first (PEM).
    pub cert_path: PathBuf,
    /// This node's private key (PEM).
    pub key_path: PathBuf,
    /// The CA certificates a peer's chain must lead to (PEM, one or more).
    pub ca_cert_path: PathBuf,
    /// Whether a dialer must present a certificate (mutual TLS; default `true`). Without it a
    /// dialer may connect with no certificate, and is then not identified by one.
    pub require_client_auth: bool,
    /// How a peer's certificate must name its node id (default
    /// [`NodeIdVerification::SubjectAltName`]).
    pub node_id_verification: NodeIdVerification,
}

impl TlsConfig {
    /// Mutual TLS with node ids checked against the certificates' DNS subject alternative
    /// names: the settings for production.
    pub fn new(
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
        ca_cert_path: impl Into<PathBuf>,
    ) -> TlsConfig {
        TlsConfig {
            cert_path: cert_path.into(),
            key_path: key_path.into(),
            ca_cert_path: ca_cert_path.into(),
            require_client_auth: true,
            node_id_verification: NodeIdVerification::SubjectAltName,
        }
    }
}

/// How a peer's certificate must name the node id it claims (seed 002's `node_id_verification`).
///
/// A dialer checks the certificate of the node it dials against the node id it dials; an
/// acceptor checks a dialer's certificate against the node id of its HELLO. A mismatch closes
/// the connection before any session state exists for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NodeIdVerification {
    /// Any certificate that chains to the CA will do, whatever it names (testing only).
    None,
    /// The certificate's subject common name (CN) must equal the node id.
    CommonName,
    /// A DNS name among the certificate's subject alternative names must equal the node id.
    #[default]
    SubjectAltName,
}

/// What a node accepts and dials (seed 002's security modes; docs/security.md, "Modes").
///
/// | mode | accepts | dials | needs |
/// |---|---|---|---|
/// | `Strict` | TLS 1.3 only, with a client certificate from the CA naming the node id | TLS, presenting its certificate | [`Config::tls`](crate::Config::tls) with `require_client_auth` and a node id check |
/// | `Permissive` | TLS 1.3 only; a client certificate is checked if the dialer presents one | TLS | `Config::tls` |
/// | `Development` | plaintext only | plaintext | no TLS configured |
/// | `Legacy` | plaintext only | plaintext | no TLS configured |
///
/// No mode is ever negotiated down: a node with TLS reads no plaintext frame (a plaintext
/// dialer is answered, in plaintext, with GOAWAY `TlsRequired` and closed), and a plaintext
/// node does not speak TLS. Plaintext modes authenticate nobody: anyone who can reach the node
/// can claim any node id. Use them on loopback or a trusted network only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityMode {
    /// Mutual TLS with node ids checked against certificates: for production.
    Strict,
    /// TLS, client certificates optional: for rolling TLS out before every node has a
    /// certificate of its own that the CA signed.
    Permissive,
    /// Plaintext, for tests on one machine.
    Development,
    /// Plaintext, for talking to builds that predate TLS.
    Legacy,
}

impl SecurityMode {
    /// The mode a configuration without an explicit one runs in: `Strict` when TLS is
    /// configured with client certificates required and node ids checked, `Permissive` when
    /// TLS is configured otherwise, `Development` without TLS.
    pub fn inferred(tls: Option<&TlsConfig>) -> SecurityMode {
        match tls {
            Some(tls)
                if tls.require_client_auth
                    && tls.node_id_verification != NodeIdVerification::None =>
            {
                SecurityMode::Strict
            }
            Some(_) => SecurityMode::Permissive,
            None => SecurityMode::Development,
        }
    }

    /// Whether the mode runs TLS.
    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityMode::Strict | SecurityMode::Permissive)
    }
}

impl std::fmt::Display for SecurityMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SecurityMode::Strict => "strict",
            SecurityMode::Permissive => "permissive",
            SecurityMode::Development => "development",
            SecurityMode::Legacy => "legacy",
        })
    }
}

impl std::str::FromStr for SecurityMode {
    type Err = String;

    fn from_str(s: &str) -> Result<SecurityMode, String> {
        match s.to_ascii_lowercase().as_str() {
            "strict" => Ok(SecurityMode::Strict),
            "permissive" => Ok(SecurityMode::Permissive),
            "development" => Ok(SecurityMode::Development),
            "legacy" => Ok(SecurityMode::Legacy),
            _ => Err(format!(
                "unknown security mode {s:?} (strict, permissive, development or legacy)"
            )),
        }
    }
}
