//! Ethernet addresses as the shim, the VMM and the agent pass them:
//! `aa:bb:cc:dd:ee:ff`, unicast and not all zero.

/// Why a MAC address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("MAC address {text:?} {why}")]
pub struct InvalidMac {
    /// The address as given (at most its first 32 characters).
    pub text: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// Parses `aa:bb:cc:dd:ee:ff` (hex digits of either case) into its bytes.
pub fn parse_mac(text: &str) -> Result<[u8; 6], InvalidMac> {
    let invalid = |why| InvalidMac {
        text: text.chars().take(32).collect(),
        why,
    };
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(|| invalid("is not six bytes"))?;
        if part.len() != 2 {
            return Err(invalid("is not like 02:00:00:00:00:01"));
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| invalid("is not hexadecimal"))?;
    }
    if parts.next().is_some() {
        return Err(invalid("is not six bytes"));
    }
    if mac[0] & 1 != 0 {
        return Err(invalid("is a multicast address"));
    }
    if mac == [0; 6] {
        return Err(invalid("is all zero"));
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unicast_addresses_parse_and_others_are_refused_with_the_reason() {
        assert_eq!(
            parse_mac("02:00:0A:ff:00:01").expect("mac"),
            [2, 0, 10, 255, 0, 1]
        );
        for (bad, why) in [
            ("", "is not like"),
            ("02:00:00:00:00", "is not six bytes"),
            ("02:00:00:00:00:00:00", "is not six bytes"),
            ("02-00-00-00-00-01", "is not like"),
            ("zz:00:00:00:00:01", "is not hexadecimal"),
            ("2:0:0:0:0:1", "is not like"),
            ("01:00:5e:00:00:01", "multicast"),
            ("00:00:00:00:00:00", "all zero"),
        ] {
            let err = parse_mac(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }
}
