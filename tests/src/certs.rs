//! Certificates for the TLS tests, made the way an operator makes them: with the `openssl`
//! command line (installed by `scripts/ci-deps.sh`). A test without it skips, saying so.

use std::path::{Path, PathBuf};
use std::process::Command;

use ringwire::TlsConfig;

use crate::TempDir;

/// A CA in a scratch directory, signing node certificates.
#[derive(Debug)]
pub struct OpensslCa {
    dir: TempDir,
    name: String,
}

impl OpensslCa {
    /// A new CA, or `None` (after printing why) if `openssl` cannot be run.
    pub fn new(test: &str, name: &str) -> Option<OpensslCa> {
        if Command::new("openssl").arg("version").output().is_err() {
            crate::skip(
                test,
                "the openssl command is missing (scripts/ci-deps.sh installs it)",
            );
            return None;
        }
        let dir = TempDir::new(&format!("tls-{name}"));
        let ca = OpensslCa {
            dir,
            name: name.to_owned(),
        };
        ca.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &ca.file("ca.key"),
            "-out",
            &ca.file("ca.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        Some(ca)
    }

    /// The CA's certificate (PEM).
    pub fn cert_path(&self) -> PathBuf {
        self.dir.0.join("ca.crt")
    }

    /// A certificate for `cn` with DNS names `sans` (an EC P-256 key in PKCS#8), signed by
    /// this CA, in a configuration that trusts `trusted`.
    pub fn node(&self, cn: &str, sans: &[&str], trusted: &OpensslCa) -> TlsConfig {
        self.node_with_key(
            cn,
            sans,
            trusted,
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        )
    }

    /// Like [`OpensslCa::node`], with a 2048-bit RSA key.
    pub fn rsa_node(&self, cn: &str, sans: &[&str], trusted: &OpensslCa) -> TlsConfig {
        self.node_with_key(cn, sans, trusted, &["-newkey", "rsa:2048"])
    }

    /// Like [`OpensslCa::node`], but valid only on 1 January 2020: long expired. Signed with
    /// `openssl ca`, the one openssl 3.0 command that takes explicit dates.
    pub fn expired_node(&self, cn: &str, sans: &[&str], trusted: &OpensslCa) -> TlsConfig {
        let base = format!("{}-{cn}-expired", self.name);
        let (key_path, csr, cert_path, ext) = self.request(
            &base,
            cn,
            sans,
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        );
        let config = self.file("ca.cnf");
        std::fs::write(
            &config,
            "[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\nnew_certs_dir = .\n\
             serial = serial\ndefault_md = sha256\npolicy = any\nunique_subject = no\n\
             [any]\ncommonName = supplied\n",
        )
        .unwrap();
        std::fs::write(self.file("index.txt"), "").unwrap();
        std::fs::write(self.file("serial"), "1000\n").unwrap();
        self.openssl(&[
            "ca",
            "-batch",
            "-notext",
            "-config",
            &config,
            "-cert",
            &self.file("ca.crt"),
            "-keyfile",
            &self.file("ca.key"),
            "-in",
            &csr,
            "-out",
            &cert_path,
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200102000000Z",
            "-extfile",
            &ext,
        ]);
        TlsConfig::new(cert_path, key_path, trusted.cert_path())
    }

    /// A key (made with `key`), a signing request for `cn` and the extensions file for `sans`:
    /// their paths, and the path the certificate goes to.
    fn request(
        &self,
        base: &str,
        cn: &str,
        sans: &[&str],
        key: &[&str],
    ) -> (String, String, String, String) {
        let (key_path, csr, cert_path, ext) = (
            self.file(&format!("{base}.key")),
            self.file(&format!("{base}.csr")),
            self.file(&format!("{base}.crt")),
            self.file(&format!("{base}.ext")),
        );
        let mut args = vec!["req", "-nodes", "-keyout", &key_path, "-out", &csr];
        args.extend_from_slice(key);
        let subject = format!("/CN={cn}");
        args.extend_from_slice(&["-subj", &subject]);
        self.openssl(&args);
        let mut extensions =
            String::from("basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n");
        if !sans.is_empty() {
            let names: Vec<String> = sans.iter().map(|s| format!("DNS:{s}")).collect();
            extensions.push_str(&format!("subjectAltName={}\n", names.join(",")));
        }
        std::fs::write(&ext, extensions).unwrap();
        (key_path, csr, cert_path, ext)
    }

    fn node_with_key(
        &self,
        cn: &str,
        sans: &[&str],
        trusted: &OpensslCa,
        key: &[&str],
    ) -> TlsConfig {
        let base = format!("{}-{cn}", self.name);
        let (key_path, csr, cert_path, ext) = self.request(&base, cn, sans, key);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &self.file("ca.crt"),
            "-CAkey",
            &self.file("ca.key"),
            "-CAcreateserial",
            "-out",
            &cert_path,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
        TlsConfig::new(cert_path, key_path, trusted.cert_path())
    }

    fn file(&self, name: &str) -> String {
        self.dir.0.join(name).display().to_string()
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir.0)
            .output()
            .expect("running openssl");
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The scratch directory.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }
}
