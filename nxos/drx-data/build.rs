//! Builds the XDP programs under bpf/ with clang -target bpf (with BTF).

use std::{env, path::PathBuf, process::Command};

const PROGRAMS: &[&str] = &["xdp_trust"];

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let clang = env::var("BPI_CLANG").unwrap_or_else(|_| "clang".into());
    // The object is embedded in the bpi-os binary: its debug info and BTF
    // must not carry the checkout's path, or the image changes with it.
    let here = env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    for name in PROGRAMS {
        let src = format!("bpf/{name}.c");
        println!("cargo:rerun-if-changed={src}");
        let obj = out.join(format!("{name}.o"));
        let result = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-ffile-prefix-map={here}=."))
            // Debian keeps asm/ headers under the multiarch directory.
            .arg(format!("-I/usr/include/{}-linux-gnu", env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default()))
            .args(["-c", &src, "-o"])
            .arg(&obj)
            .status();
        match result {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("{clang} -target bpf failed on {src} ({s})"),
            Err(e) => panic!(
                "cannot run {clang} to build {src}: {e}. Install the eBPF toolchain: \
                 apt-get install clang libbpf-dev linux-libc-dev (or run `cargo xtask build-image`, which installs them)"
            ),
        }
    }
    println!("cargo:rerun-if-env-changed=BPI_CLANG");
}
