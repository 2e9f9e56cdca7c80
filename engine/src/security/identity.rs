//! Node identity in a certificate: the names a peer's (already verified) certificate gives, and
//! whether they name the node id its HELLO claims.
//!
//! Reads just enough DER to find the subject's common names (OID 2.5.4.3) and the DNS names
//! of the subject-alternative-name extension (OID 2.5.29.17). The certificate has passed the
//! TLS library's chain verification before it gets here; this code still treats it as
//! untrusted bytes and answers "no name" for anything it cannot parse.

use super::NodeIdVerification;

/// Whether `cert` (DER) names `node_id` the way `verification` asks. Names compare byte for
/// byte: node ids are case-sensitive.
pub(crate) fn names_node(cert: &[u8], node_id: &str, verification: NodeIdVerification) -> bool {
    match verification {
        NodeIdVerification::None => true,
        NodeIdVerification::CommonName => common_names(cert).any(|cn| cn == node_id),
        NodeIdVerification::SubjectAltName => dns_names(cert).any(|dns| dns == node_id),
    }
}

/// The names `verification` looks at in `cert`, for error messages.
pub(crate) fn presented_names(cert: &[u8], verification: NodeIdVerification) -> Vec<String> {
    match verification {
        NodeIdVerification::None => Vec::new(),
        NodeIdVerification::CommonName => common_names(cert).map(str::to_owned).collect(),
        NodeIdVerification::SubjectAltName => dns_names(cert).map(str::to_owned).collect(),
    }
}

/// The subject's common names.
fn common_names(cert: &[u8]) -> impl Iterator<Item = &str> {
    let subject = tbs_fields(cert).and_then(|fields| fields.subject);
    subject
        .into_iter()
        .flat_map(|name| Der(name).map(|(_, rdn)| rdn))
        .flat_map(|rdn| Der(rdn).map(|(_, attribute)| attribute))
        .filter_map(|attribute| {
            let mut parts = Der(attribute);
            let (OID, oid) = parts.next()? else {
                return None;
            };
            if oid != COMMON_NAME {
                return None;
            }
            let (tag, value) = parts.next()?;
            matches!(tag, UTF8_STRING | PRINTABLE_STRING | IA5_STRING)
                .then(|| std::str::from_utf8(value).ok())
                .flatten()
        })
}

/// The DNS names of the subject-alternative-name extension.
fn dns_names(cert: &[u8]) -> impl Iterator<Item = &str> {
    let extensions = tbs_fields(cert).and_then(|fields| fields.extensions);
    extensions
        .and_then(|wrapped| Der(wrapped).next())
        .into_iter()
        .flat_map(|(_, list)| Der(list).map(|(_, extension)| extension))
        .filter_map(|extension| {
            let mut parts = Der(extension);
            let (OID, oid) = parts.next()? else {
                return None;
            };
            if oid != SUBJECT_ALT_NAME {
                return None;
            }
            // `critical` is optional; the value is the last part, an OCTET STRING.
            parts.find(|(tag, _)| *tag == OCTET_STRING).map(|(_, v)| v)
        })
        .filter_map(|value| Der(value).next().map(|(_, names)| names))
        .flat_map(Der)
        .filter_map(|(tag, name)| {
            (tag == DNS_NAME)
                .then(|| std::str::from_utf8(name).ok())
                .flatten()
        })
}

/// The parts of a TBSCertificate this module reads.
struct TbsFields<'a> {
    subject: Option<&'a [u8]>,
    extensions: Option<&'a [u8]>,
}

/// Finds the subject and the extensions in `cert`'s TBSCertificate.
fn tbs_fields(cert: &[u8]) -> Option<TbsFields<'_>> {
    let (SEQUENCE, certificate) = Der(cert).next()? else {
        return None;
    };
    let (SEQUENCE, tbs) = Der(certificate).next()? else {
        return None;
    };
    let mut fields = Der(tbs).peekable();
    if fields.peek()?.0 == VERSION {
        fields.next();
    }
    // serialNumber, signature, issuer, validity, then the subject.
    let mut fields = fields.skip(4);
    let (SEQUENCE, subject) = fields.next()? else {
        return None;
    };
    let extensions = fields.find(|(tag, _)| *tag == EXTENSIONS).map(|(_, e)| e);
    Some(TbsFields {
        subject: Some(subject),
        extensions,
    })
}

/// The elements of a DER sequence's contents, as (tag, contents); stops at the first element
/// it cannot read.
struct Der<'a>(&'a [u8]);

impl<'a> Iterator for Der<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.0.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 || rest.len() < count {
                self.0 = &[];
                return None;
            }
            let len = rest[..count]
                .iter()
                .fold(0usize, |len, &b| (len << 8) | usize::from(b));
            (len, &rest[count..])
        };
        if rest.len() < len {
            self.0 = &[];
            return None;
        }
        let (contents, rest) = rest.split_at(len);
        self.0 = rest;
        Some((tag, contents))
    }
}

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const UTF8_STRING: u8 = 0x0c;
const PRINTABLE_STRING: u8 = 0x13;
const IA5_STRING: u8 = 0x16;
/// `[0] EXPLICIT` version of a TBSCertificate.
const VERSION: u8 = 0xa0;
/// `[3] EXPLICIT` extensions of a TBSCertificate.
const EXTENSIONS: u8 = 0xa3;
/// `[2] IMPLICIT IA5String`: a GeneralName's dNSName.
const DNS_NAME: u8 = 0x82;
/// 2.5.4.3
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
/// 2.5.29.17
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    use super::*;

    fn cert(cn: Option<&str>, sans: &[&str]) -> Vec<u8> {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "ringwire tests");
        if let Some(cn) = cn {
            name.push(DnType::CommonName, cn);
        }
        params.distinguished_name = name;
        params.subject_alt_names = sans
            .iter()
            .map(|s| SanType::DnsName((*s).try_into().unwrap()))
            .collect();
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn common_name_and_dns_names_are_found() {
        let der = cert(Some("node-a"), &["node-b", "node-c.example"]);
        assert_eq!(common_names(&der).collect::<Vec<_>>(), ["node-a"]);
        assert_eq!(
            dns_names(&der).collect::<Vec<_>>(),
            ["node-b", "node-c.example"]
        );
        let v = NodeIdVerification::CommonName;
        assert!(names_node(&der, "node-a", v));
        assert!(!names_node(&der, "node-b", v));
        let v = NodeIdVerification::SubjectAltName;
        assert!(names_node(&der, "node-c.example", v));
        assert!(!names_node(&der, "node-a", v));
        assert!(!names_node(&der, "Node-b", v), "case matters");
        assert!(names_node(&der, "anyone", NodeIdVerification::None));
        assert_eq!(presented_names(&der, v), ["node-b", "node-c.example"]);
    }

    #[test]
    fn a_certificate_without_the_names_names_nobody() {
        let der = cert(None, &[]);
        assert!(!names_node(&der, "node-a", NodeIdVerification::CommonName));
        assert!(!names_node(
            &der,
            "node-a",
            NodeIdVerification::SubjectAltName
        ));
    }

    #[test]
    fn truncated_or_garbage_input_names_nobody() {
        let der = cert(Some("node-a"), &["node-a"]);
        for len in 0..der.len() {
            // Any prefix: never a panic, and no name read past the end.
            let _ = names_node(&der[..len], "node-a", NodeIdVerification::CommonName);
            let _ = names_node(&der[..len], "node-a", NodeIdVerification::SubjectAltName);
        }
        let garbage: Vec<u8> = (0..200u32).map(|i| (i * 37 + 11) as u8).collect();
        assert!(!names_node(&garbage, "x", NodeIdVerification::CommonName));
        assert!(!names_node(
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            "x",
            NodeIdVerification::SubjectAltName
        ));
    }
}
