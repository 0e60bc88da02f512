//! What a unified kernel image carries for a boot loader that cannot run
//! it: the kernel, initrd and command line in its `.linux`, `.initrd` and
//! `.cmdline` sections. GRUB's BIOS path boots these, taken out of the very
//! UKI systemd-boot boots (at build and at update), so both paths start the
//! same bytes.

use anyhow::{bail, Context, Result};
use object::read::pe::PeFile64;
use object::{Object, ObjectSection};

pub struct Parts {
    pub kernel: Vec<u8>,
    pub initrd: Vec<u8>,
    pub cmdline: String,
}

/// Reads the three sections (their virtual size: the bytes objcopy added,
/// without the file alignment's padding).
pub fn parts(image: &[u8]) -> Result<Parts> {
    let pe = PeFile64::parse(image).context("not a 64-bit PE image (a UKI)")?;
    let section = |name: &str| -> Result<Vec<u8>> {
        let s = pe.section_by_name(name).with_context(|| format!("the UKI has no {name} section"))?;
        let data = s.data().with_context(|| format!("the UKI's {name} section lies outside the file"))?;
        if data.is_empty() {
            bail!("the UKI's {name} section is empty");
        }
        Ok(data.to_vec())
    };
    let raw = section(".cmdline")?;
    let cmdline = String::from_utf8(raw).context("the UKI's command line is not UTF-8")?;
    let cmdline = cmdline.trim_end_matches(['\0', '\n', ' ']).to_string();
    Ok(Parts { kernel: section(".linux")?, initrd: section(".initrd")?, cmdline })
}

/// For tests here and in the crates that read UKIs.
#[doc(hidden)]
pub mod testing {
    /// A minimal PE32+ image with the given sections (name, bytes), laid
    /// out as objcopy does: raw data padded to 0x200, virtual size exact.
    pub fn pe_with(sections: &[(&str, &[u8])]) -> Vec<u8> {
        const ALIGN: usize = 0x200;
        let pe_at = 0x40usize;
        let opt_size = 240usize;
        let headers = pe_at + 4 + 20 + opt_size + 40 * sections.len();
        let mut raw_at = headers.div_ceil(ALIGN) * ALIGN;
        let mut out = vec![0u8; raw_at];
        out[..2].copy_from_slice(b"MZ");
        out[0x3c..0x40].copy_from_slice(&(pe_at as u32).to_le_bytes());
        out[pe_at..pe_at + 4].copy_from_slice(b"PE\0\0");
        let coff = pe_at + 4;
        out[coff..coff + 2].copy_from_slice(&0x8664u16.to_le_bytes());
        out[coff + 2..coff + 4].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        out[coff + 16..coff + 18].copy_from_slice(&(opt_size as u16).to_le_bytes());
        let opt = coff + 20;
        out[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        out[opt + 32..opt + 36].copy_from_slice(&0x1000u32.to_le_bytes()); // section alignment
        out[opt + 36..opt + 40].copy_from_slice(&(ALIGN as u32).to_le_bytes()); // file alignment
        out[opt + 60..opt + 64].copy_from_slice(&(raw_at as u32).to_le_bytes()); // size of headers
        out[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes()); // data directories
        let mut table = opt + opt_size;
        let mut data = Vec::new();
        for (i, (name, bytes)) in sections.iter().enumerate() {
            let h = &mut out[table..table + 40];
            h[..name.len()].copy_from_slice(name.as_bytes());
            h[8..12].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
            h[12..16].copy_from_slice(&(0x10000 * (i as u32 + 1)).to_le_bytes());
            let padded = bytes.len().div_ceil(ALIGN) * ALIGN;
            h[16..20].copy_from_slice(&(padded as u32).to_le_bytes());
            h[20..24].copy_from_slice(&(raw_at as u32).to_le_bytes());
            data.extend_from_slice(bytes);
            data.resize(data.len() + padded - bytes.len(), 0);
            raw_at += padded;
            table += 40;
        }
        out.extend(data);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::testing::pe_with;
    use super::*;

    #[test]
    fn sections_without_padding_and_the_cmdline_without_its_nul() {
        let kernel = vec![0x4bu8; 1000];
        let img = pe_with(&[(".osrel", b"ID=bpi-os\n"), (".cmdline", b"roothash=ab ro\0"), (".linux", &kernel), (".initrd", b"initrd")]);
        let p = parts(&img).unwrap();
        assert_eq!(p.kernel, kernel);
        assert_eq!(p.initrd, b"initrd");
        assert_eq!(p.cmdline, "roothash=ab ro");
        let no_initrd = pe_with(&[(".cmdline", b"x\0"), (".linux", b"k")]);
        assert!(parts(&no_initrd).err().is_some_and(|e| e.to_string().contains(".initrd")));
        assert!(parts(b"MZ not a PE").is_err());
    }
}
