//! The rules for names and for what a device declares, checked by the device before it
//! connects ([`DeviceConfig`](crate::DeviceConfig)) and by the relay on every hello: one
//! function, so the two ends can never disagree.

use super::MAX_NAME_LEN;

/// Whether `s` is a valid device or service name: 1 to 63 bytes of `A-Z a-z 0-9 . _ -`.
pub(crate) fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Text a peer sent for a human (a refusal or status message, a reason), made safe to print
/// on a terminal or in a log line: control characters (newlines, `ESC`) are escaped, so a
/// peer cannot forge log lines or drive the user's terminal.
pub(crate) fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// What is wrong with a device's declaration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadDeclaration {
    #[error("invalid device id {0:?}: want 1-63 characters of A-Z a-z 0-9 . _ -")]
    DeviceId(String),
    #[error("invalid service name {0:?}: want 1-63 characters of A-Z a-z 0-9 . _ -")]
    ServiceName(String),
    #[error("service {0:?} declared twice")]
    DuplicateService(String),
    #[error("public port asked twice for service {0:?}")]
    DuplicatePublic(String),
    #[error("public port for undeclared service {0:?}")]
    UndeclaredPublic(String),
}

/// Checks a device's ID, its service names (valid, no duplicates) and its public port
/// requests (each for one declared service, at most once).
pub(crate) fn check_declaration(
    device: &str,
    services: &[String],
    public: &[(String, u16)],
) -> Result<(), BadDeclaration> {
    if !is_valid_name(device) {
        return Err(BadDeclaration::DeviceId(device.to_owned()));
    }
    for (i, s) in services.iter().enumerate() {
        if !is_valid_name(s) {
            return Err(BadDeclaration::ServiceName(s.clone()));
        }
        if services[..i].contains(s) {
            return Err(BadDeclaration::DuplicateService(s.clone()));
        }
    }
    for (i, (s, _)) in public.iter().enumerate() {
        if public[..i].iter().any(|(o, _)| o == s) {
            return Err(BadDeclaration::DuplicatePublic(s.clone()));
        }
        if !services.contains(s) {
            return Err(BadDeclaration::UndeclaredPublic(s.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_restricted_to_a_safe_alphabet() {
        for ok in ["pi-42", "ssh", "web.v2", "a_b", &"x".repeat(63)] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in ["", "a b", "a/b", "127.0.0.1:22", &"x".repeat(64), "é", "*"] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn peer_text_is_printed_with_its_control_characters_escaped() {
        assert_eq!(printable("port 1: busy"), "port 1: busy");
        assert_eq!(
            printable("x\n2026 INFO forged\u{1b}]0;pwned\u{7}"),
            "x\\n2026 INFO forged\\u{1b}]0;pwned\\u{7}"
        );
        assert_eq!(printable("é✓"), "é✓");
    }

    #[test]
    fn declarations_refuse_bad_names_duplicates_and_undeclared_public_services() {
        let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(check_declaration("pi", &s(&["ssh", "web"]), &[("web".into(), 0)]).is_ok());
        assert_eq!(
            check_declaration("pi 1", &s(&["ssh"]), &[]),
            Err(BadDeclaration::DeviceId("pi 1".into()))
        );
        assert!(matches!(
            check_declaration("pi", &s(&["ssh", "ssh"]), &[]),
            Err(BadDeclaration::DuplicateService(_))
        ));
        assert!(matches!(
            check_declaration("pi", &s(&["a/b"]), &[]),
            Err(BadDeclaration::ServiceName(_))
        ));
        assert!(matches!(
            check_declaration("pi", &s(&["ssh"]), &[("web".into(), 0)]),
            Err(BadDeclaration::UndeclaredPublic(_))
        ));
        assert!(matches!(
            check_declaration("pi", &s(&["ssh"]), &[("ssh".into(), 0), ("ssh".into(), 1)]),
            Err(BadDeclaration::DuplicatePublic(_))
        ));
    }
}
