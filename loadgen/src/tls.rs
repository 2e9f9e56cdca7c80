//! TLS for loadgen's engines: certificates from PEM files (`--tls-cert`, `--tls-key`,
//! `--tls-ca`), or made for the run (`run --tls`): a throwaway CA and, for each engine, a
//! certificate naming its node id, so that a run checks identities as a production node does
//! (mutual TLS, node ids against DNS subject alternative names).

use std::path::PathBuf;
use std::sync::Mutex;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use ringwire::{AuthToken, Config, NodeIdVerification, RateLimit, SecurityMode, TlsConfig};

/// The TLS flags of `run`, `serve` and `send`.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// This node's certificate chain, leaf first (PEM). With --tls-key and --tls-ca, every
    /// connection runs over TLS with these files.
    #[arg(long, value_name = "PEM", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PEM", requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<PathBuf>,
    /// The CA certificates a peer's chain must lead to (PEM).
    #[arg(long, value_name = "PEM", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// How a peer's certificate must name its node id: `san` (a DNS subject alternative
    /// name), `cn` (the subject common name) or `none`.
    #[arg(long, value_enum, default_value_t = Verification::San)]
    pub node_id_verification: Verification,
    /// The security mode: `strict` (mutual TLS, node ids checked), `permissive` (TLS, client
    /// certificates optional), `development` or `legacy` (plaintext). Default: what the engine
    /// infers, strict with TLS files, development without.
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    pub security: Option<SecurityMode>,
    /// End-to-end CRC32C of every payload: `on` or `off` (default: the engine's, on without
    /// TLS and off with it).
    #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
    pub crc: Option<bool>,
    /// Offer LZ4 and compress payloads of at least 256 bytes for peers that offer it too.
    #[arg(long)]
    pub lz4: bool,
    /// Messages each engine takes in per peer: `default` (bursts of 100, 50/s), `aggressive`
    /// (50, 25/s), `permissive` (200, 100/s), `disabled` (the engine's default), or
    /// `BURST/PER_SECOND`. A peer over it is slowed, never dropped.
    #[arg(long, value_name = "LIMIT", value_parser = parse_rate_limit)]
    pub rate_limit: Option<RateLimitArg>,
    /// A file holding the cluster's shared secret (at least 16 bytes; a trailing newline is
    /// dropped): every engine requires the peers it talks to to prove they hold it (AUTH).
    #[arg(long, value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,
}

/// `--rate-limit`: a limit, or none.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitArg(pub Option<RateLimit>);

fn parse_rate_limit(text: &str) -> Result<RateLimitArg, String> {
    if text.eq_ignore_ascii_case("disabled") {
        return Ok(RateLimitArg(None));
    }
    text.parse().map(|limit| RateLimitArg(Some(limit)))
}

fn parse_on_off(text: &str) -> Result<bool, String> {
    match text {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{text:?}: expected on or off")),
    }
}

/// The wire settings beside TLS: security mode, checksums, compression.
#[derive(Debug, Clone, Default)]
pub struct Wire {
    pub mode: Option<SecurityMode>,
    pub crc: Option<bool>,
    pub lz4: bool,
    pub inbound_rate_limit: Option<RateLimit>,
    pub auth_token: Option<AuthToken>,
}

fn parse_mode(text: &str) -> Result<SecurityMode, String> {
    text.parse()
}

/// An engine's TLS settings, security mode, checksums and compression.
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub tls: Option<TlsConfig>,
    pub wire: Wire,
}

impl Security {
    /// The settings for `node_id` from the run's TLS (if any) and `wire`: permissive mode does
    /// not ask dialers for a certificate.
    pub fn new(tls: Option<&Tls>, wire: Wire, node_id: &str) -> Result<Security, String> {
        let mut tls = tls.map(|tls| tls.config_for(node_id)).transpose()?;
        if wire.mode == Some(SecurityMode::Permissive)
            && let Some(tls) = &mut tls
        {
            tls.require_client_auth = false;
        }
        Ok(Security { tls, wire })
    }

    /// Puts the settings into an engine's configuration.
    pub fn apply(self, config: &mut Config) {
        config.tls = self.tls;
        config.security_mode = self.wire.mode;
        config.crc = self.wire.crc;
        config.compression.enabled = self.wire.lz4;
        config.inbound_rate_limit = self.wire.inbound_rate_limit;
        config.auth_token = self.wire.auth_token;
    }
}

impl TlsArgs {
    /// The wire settings the flags ask for.
    ///
    /// # Errors
    ///
    /// The `--auth-token-file` cannot be read.
    pub fn wire(&self) -> Result<Wire, String> {
        let auth_token = self
            .auth_token_file
            .as_ref()
            .map(|path| {
                AuthToken::from_file(path)
                    .map_err(|e| format!("reading --auth-token-file {}: {e}", path.display()))
            })
            .transpose()?;
        Ok(Wire {
            auth_token,
            mode: self.security,
            crc: self.crc,
            lz4: self.lz4,
            inbound_rate_limit: self.rate_limit.and_then(|limit| limit.0),
        })
    }
}

/// `--node-id-verification`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Verification {
    None,
    Cn,
    San,
}

impl From<Verification> for NodeIdVerification {
    fn from(v: Verification) -> NodeIdVerification {
        match v {
            Verification::None => NodeIdVerification::None,
            Verification::Cn => NodeIdVerification::CommonName,
            Verification::San => NodeIdVerification::SubjectAltName,
        }
    }
}

impl TlsArgs {
    /// The TLS the flags ask for, if any.
    pub fn tls(&self) -> Option<Tls> {
        let (Some(cert), Some(key), Some(ca)) = (&self.tls_cert, &self.tls_key, &self.tls_ca)
        else {
            return None;
        };
        let mut config = TlsConfig::new(cert, key, ca);
        config.node_id_verification = self.node_id_verification.into();
        Some(Tls::Files(config))
    }
}

/// Where an engine's TLS settings come from.
#[derive(Debug)]
pub enum Tls {
    /// The same files for every engine.
    Files(TlsConfig),
    /// A certificate made for each engine by a throwaway CA.
    Ephemeral(Box<EphemeralCa>),
}

impl Tls {
    /// The settings for the engine whose node id is `node_id`.
    pub fn config_for(&self, node_id: &str) -> Result<TlsConfig, String> {
        match self {
            Tls::Files(config) => Ok(config.clone()),
            Tls::Ephemeral(ca) => ca.config_for(node_id),
        }
    }
}

/// A CA made for one run, in a scratch directory removed when it is dropped.
pub struct EphemeralCa {
    dir: PathBuf,
    ca: Mutex<(rcgen::Certificate, KeyPair)>,
}

impl std::fmt::Debug for EphemeralCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EphemeralCa")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl EphemeralCa {
    pub fn new() -> Result<EphemeralCa, String> {
        let dir = std::env::temp_dir().join(format!(
            "loadgen-tls-{}-{:x}",
            std::process::id(),
            uuid::Uuid::new_v4().as_u128() as u32
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let fail = |e: rcgen::Error| format!("making the run's CA: {e}");
        let key = KeyPair::generate().map_err(fail)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "loadgen run CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).map_err(fail)?;
        write(&dir.join("ca.crt"), &cert.pem())?;
        Ok(EphemeralCa {
            dir,
            ca: Mutex::new((cert, key)),
        })
    }

    /// A certificate naming `node_id` (CN and DNS SAN), for both ends of a connection.
    fn config_for(&self, node_id: &str) -> Result<TlsConfig, String> {
        let fail = |e: rcgen::Error| format!("making a certificate for {node_id:?}: {e}");
        let key = KeyPair::generate().map_err(fail)?;
        let mut params = CertificateParams::new(vec![node_id.to_owned()]).map_err(fail)?;
        params.distinguished_name.push(DnType::CommonName, node_id);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = {
            let ca = self.ca.lock().expect("the CA lock");
            params.signed_by(&key, &ca.0, &ca.1).map_err(fail)?
        };
        let name = format!("{node_id}-{:x}", uuid::Uuid::new_v4().as_u128() as u32);
        let (cert_path, key_path) = (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        );
        write(&cert_path, &cert.pem())?;
        write(&key_path, &key.serialize_pem())?;
        Ok(TlsConfig::new(cert_path, key_path, self.dir.join("ca.crt")))
    }
}

impl Drop for EphemeralCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write(path: &std::path::Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}
