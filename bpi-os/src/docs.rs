//! `bpi-os generate-docs --out DIR` (hidden): the man pages and shell
//! completions, generated from the same clap definition the command parses
//! with, so they cannot drift from it. The image build runs it into
//! /usr/share of the root it composes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap_complete::Shell;

/// Writes under `out` (a usr/share): man/man1/*.1 for the command and every
/// subcommand, and completions for bash, zsh and fish. Returns the files.
pub fn generate(cmd: clap::Command, out: &Path) -> Result<Vec<PathBuf>> {
    let man = out.join("man/man1");
    bpi_support::fsmode::create_dirs(&man, 0o755)?;
    clap_mangen::generate_to(cmd.clone(), &man).with_context(|| format!("writing man pages to {}", man.display()))?;
    // Only our own pages: man1 of a root holds every other package's too.
    let mut files: Vec<PathBuf> = std::fs::read_dir(&man)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()?
        .into_iter()
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("bpi-os") && n.ends_with(".1")))
        .collect();
    for (shell, dir) in [(Shell::Bash, "bash-completion/completions"), (Shell::Zsh, "zsh/vendor-completions"), (Shell::Fish, "fish/vendor_completions.d")] {
        let dir = out.join(dir);
        bpi_support::fsmode::create_dirs(&dir, 0o755)?;
        let mut path = clap_complete::generate_to(shell, &mut cmd.clone(), "bpi-os", &dir)
            .with_context(|| format!("writing {shell} completions to {}", dir.display()))?;
        if shell == Shell::Bash {
            // bash-completion loads completions/<command> when <command> is first completed.
            let named = dir.join("bpi-os");
            std::fs::rename(&path, &named)?;
            path = named;
        }
        files.push(path);
    }
    files.sort();
    // Written with the umask's mode: set it.
    for f in &files {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(files)
}
