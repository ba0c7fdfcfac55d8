//! Mutual TLS: the certificate the relay verified names the device IDs its holder may
//! register as.

use super::{AuthRejected, AuthRequest, Authenticator, BoxFuture, Grants, Identity, Pattern};
use crate::protocol::is_valid_name;

/// Mutual TLS: the relay verified the client certificate against its client CA; each DNS
/// name in the certificate is a device ID the client may register as.
#[derive(Debug, Clone, Default)]
pub struct CertAuthenticator {
    access: Vec<(Pattern, Pattern)>,
}

impl CertAuthenticator {
    /// Certificates grant registration as the device IDs they name, and nothing else.
    pub fn new() -> Self {
        Self::default()
    }
    /// Also grants every certificate holder access to `service` on `device`.
    pub fn access(mut self, device: Pattern, service: Pattern) -> Self {
        self.access.push((device, service));
        self
    }
}

impl CertAuthenticator {
    /// Registration as each of `names`, and the access every certificate gets.
    fn grants_for(&self, names: &[&str]) -> Grants {
        let grants = names
            .iter()
            .fold(Grants::new(), |g, n| g.register(Pattern((*n).to_owned())));
        self.access
            .iter()
            .fold(grants, |g, (d, s)| g.access(d.clone(), s.clone()))
    }
}

impl Authenticator for CertAuthenticator {
    fn authenticate<'a>(
        &'a self,
        request: &'a AuthRequest,
    ) -> BoxFuture<'a, Result<Identity, AuthRejected>> {
        Box::pin(async move {
            let der = request
                .client_cert
                .as_ref()
                .ok_or_else(|| AuthRejected::new("no client certificate"))?;
            let der = rustls::pki_types::CertificateDer::from(der.as_slice());
            let cert = webpki::EndEntityCert::try_from(&der)
                .map_err(|e| AuthRejected::new(format!("client certificate: {e}")))?;
            let names: Vec<&str> = cert
                .valid_dns_names()
                .filter(|n| is_valid_name(n))
                .collect();
            let first = names
                .first()
                .ok_or_else(|| AuthRejected::new("client certificate names no device"))?;
            let grants = self.grants_for(&names);
            Ok(Identity::new(*first, grants).with_principal(format!("cert:{first}")))
        })
    }

    /// A forwarded stream's caller: `cert:<name>` gets the access grants every certificate
    /// gets (the registration grants do not matter to a stream).
    fn resolve<'a>(&'a self, principal: &'a str) -> BoxFuture<'a, Option<Identity>> {
        let found = principal
            .strip_prefix("cert:")
            .filter(|n| is_valid_name(n))
            .map(|name| Identity::new(name, self.grants_for(&[name])).with_principal(principal));
        Box::pin(async move { found })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tests::request;

    #[tokio::test]
    async fn cert_authenticator_needs_a_certificate() {
        assert!(
            CertAuthenticator::new()
                .authenticate(&request(None))
                .await
                .is_err()
        );
        let id = crate::TlsIdentity::generate_self_signed(&["pi-7"]).unwrap();
        let mut req = request(None);
        req.client_cert = Some(id.chain[0].to_vec());
        let got = CertAuthenticator::new().authenticate(&req).await.unwrap();
        assert_eq!(got.name(), "pi-7");
        assert!(got.grants().may_register("pi-7") && !got.grants().may_register("pi-8"));
    }
}
