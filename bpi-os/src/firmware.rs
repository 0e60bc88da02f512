//! How this machine booted: UEFI or BIOS, and the Secure Boot state, from the
//! firmware's own variables (efivarfs: 4 bytes of attributes, then the value).

use serde::Serialize;

const EFI_DIR: &str = "/sys/firmware/efi";
const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";

#[derive(Debug, Serialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
pub enum Firmware {
    Uefi,
    Bios,
}

#[derive(Debug, Serialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
pub enum SecureBoot {
    /// Enforced: the firmware starts only images signed by a key in db.
    Enabled,
    Disabled,
    /// No platform key: nothing enforced, and keys can be enrolled.
    SetupMode,
    /// Not UEFI, or the variables are not readable.
    Unknown,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Boot {
    pub firmware: Firmware,
    pub secure_boot: SecureBoot,
}

fn variable(name: &str) -> Option<u8> {
    let bytes = std::fs::read(format!("{EFI_DIR}/efivars/{name}-{GLOBAL}")).ok()?;
    bytes.get(4).copied()
}

pub fn boot() -> Boot {
    if !std::path::Path::new(EFI_DIR).is_dir() {
        return Boot { firmware: Firmware::Bios, secure_boot: SecureBoot::Unknown };
    }
    Boot { firmware: Firmware::Uefi, secure_boot: secure_boot(variable("SecureBoot"), variable("SetupMode")) }
}

/// The state from the SecureBoot and SetupMode variables.
pub fn secure_boot(secure_boot: Option<u8>, setup_mode: Option<u8>) -> SecureBoot {
    match (secure_boot, setup_mode) {
        (_, Some(1)) => SecureBoot::SetupMode,
        (Some(1), _) => SecureBoot::Enabled,
        (Some(0), _) | (None, Some(0)) => SecureBoot::Disabled,
        _ => SecureBoot::Unknown,
    }
}

impl std::fmt::Display for Boot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.firmware, self.secure_boot) {
            (Firmware::Bios, _) => write!(f, "BIOS (no Secure Boot)"),
            (Firmware::Uefi, SecureBoot::Enabled) => write!(f, "UEFI, Secure Boot enabled"),
            (Firmware::Uefi, SecureBoot::Disabled) => write!(f, "UEFI, Secure Boot disabled"),
            (Firmware::Uefi, SecureBoot::SetupMode) => write!(f, "UEFI, Secure Boot in setup mode (no keys enrolled)"),
            (Firmware::Uefi, SecureBoot::Unknown) => write!(f, "UEFI, Secure Boot state unknown"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_from_the_variables() {
        assert_eq!(secure_boot(Some(1), Some(0)), SecureBoot::Enabled);
        assert_eq!(secure_boot(Some(0), Some(0)), SecureBoot::Disabled);
        assert_eq!(secure_boot(Some(0), Some(1)), SecureBoot::SetupMode);
        // OVMF without Secure Boot support has no SecureBoot variable.
        assert_eq!(secure_boot(None, Some(0)), SecureBoot::Disabled);
        assert_eq!(secure_boot(None, None), SecureBoot::Unknown);
        assert_eq!(Boot { firmware: Firmware::Uefi, secure_boot: SecureBoot::Enabled }.to_string(), "UEFI, Secure Boot enabled");
    }
}
