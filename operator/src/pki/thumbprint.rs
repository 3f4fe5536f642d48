//! Rotating an X509 device's registered thumbprints without cutting it off.
//!
//! IoT Hub keeps two thumbprints per device and accepts a certificate matching either. A new
//! identity certificate goes into the slot the device is not using, so the certificate the
//! device presents today stays valid until it has installed the new bundle.

/// The thumbprints registered for a device (upper-case hex; `None` when a slot is empty).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThumbprintPair {
    pub primary: Option<String>,
    pub secondary: Option<String>,
}

impl ThumbprintPair {
    /// Whether `thumbprint` is in either slot (case-insensitive, as hex is).
    pub fn contains(&self, thumbprint: &str) -> bool {
        [&self.primary, &self.secondary]
            .into_iter()
            .flatten()
            .any(|registered| registered.eq_ignore_ascii_case(thumbprint))
    }
}

/// The pair to register so that both `in_use` (the thumbprint of the certificate the device
/// holds now, if any) and `new` are accepted:
/// - `new` already registered: nothing changes;
/// - `in_use` is the primary: `new` becomes the secondary;
/// - `in_use` is the secondary: `new` becomes the primary;
/// - `in_use` is not registered (hub edited by hand, or no certificate yet): `new` becomes the
///   primary and `in_use`, when known, the secondary, so the device keeps working either way.
///
/// Thumbprints are stored upper-case.
pub fn rotate_thumbprints(
    registered: &ThumbprintPair,
    in_use: Option<&str>,
    new: &str,
) -> ThumbprintPair {
    let new = new.to_ascii_uppercase();
    if registered.contains(&new) {
        return registered.clone();
    }
    let is = |slot: &Option<String>, thumbprint: &str| {
        slot.as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case(thumbprint))
    };
    match in_use {
        Some(current) if is(&registered.primary, current) => ThumbprintPair {
            primary: registered.primary.clone(),
            secondary: Some(new),
        },
        Some(current) if is(&registered.secondary, current) => ThumbprintPair {
            primary: Some(new),
            secondary: registered.secondary.clone(),
        },
        Some(current) => ThumbprintPair {
            primary: Some(new),
            secondary: Some(current.to_ascii_uppercase()),
        },
        None => ThumbprintPair {
            primary: Some(new),
            secondary: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(primary: Option<&str>, secondary: Option<&str>) -> ThumbprintPair {
        ThumbprintPair {
            primary: primary.map(str::to_string),
            secondary: secondary.map(str::to_string),
        }
    }

    #[test]
    fn new_goes_into_the_slot_not_in_use() {
        let registered = pair(Some("AA"), Some("BB"));
        assert_eq!(
            rotate_thumbprints(&registered, Some("AA"), "cc"),
            pair(Some("AA"), Some("CC"))
        );
        assert_eq!(
            rotate_thumbprints(&registered, Some("bb"), "CC"),
            pair(Some("CC"), Some("BB"))
        );
        assert_eq!(
            rotate_thumbprints(&pair(Some("AA"), None), Some("AA"), "CC"),
            pair(Some("AA"), Some("CC"))
        );
    }

    #[test]
    fn already_registered_changes_nothing() {
        let registered = pair(Some("AA"), Some("BB"));
        assert_eq!(
            rotate_thumbprints(&registered, Some("AA"), "bb"),
            registered
        );
        assert_eq!(rotate_thumbprints(&registered, None, "AA"), registered);
    }

    #[test]
    fn unknown_current_certificate_is_kept_next_to_the_new_one() {
        assert_eq!(
            rotate_thumbprints(&pair(Some("AA"), Some("BB")), Some("dd"), "CC"),
            pair(Some("CC"), Some("DD"))
        );
        assert_eq!(
            rotate_thumbprints(&ThumbprintPair::default(), None, "cc"),
            pair(Some("CC"), None)
        );
    }

    #[test]
    fn a_chain_of_rotations_never_drops_the_certificate_in_use() {
        let mut registered = ThumbprintPair::default();
        let mut in_use: Option<String> = None;
        for round in 0..6 {
            let new = format!("{round:02X}");
            registered = rotate_thumbprints(&registered, in_use.as_deref(), &new);
            assert!(registered.contains(&new), "round {round}: {registered:?}");
            if let Some(current) = &in_use {
                assert!(
                    registered.contains(current),
                    "round {round}: {registered:?}"
                );
            }
            // The device installs the new bundle before the next renewal.
            in_use = Some(new);
        }
    }
}
