//! Reads `--manifests` paths (files, or directories walked for *.yaml/*.yml) into the policy
//! crate's `Manifests` and `Cluster`, and prints what was rejected or skipped to stderr.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use flowgate_policy::{Cluster, Manifests};

/// Manifest input shared by the offline commands.
#[derive(Debug, Clone, clap::Args)]
pub struct ManifestArgs {
    /// Manifest files or directories (YAML, multi-document or `kind: List`; directories are read
    /// recursively for *.yaml and *.yml). Namespaces, Pods (addressed by status.podIP/podIPs) and
    /// networking.k8s.io/v1 NetworkPolicies are used; other kinds are skipped with a notice.
    #[arg(long, short = 'm', required = true, num_args = 1.., value_delimiter = ',', env = "FLOWGATE_MANIFESTS")]
    pub manifests: Vec<PathBuf>,

    /// Do not print notices (skipped kinds, implied namespaces) to stderr.
    #[arg(long, short = 'q', env = "FLOWGATE_QUIET")]
    pub quiet: bool,
}

/// The loaded cluster and everything said about the input.
#[derive(Debug)]
pub struct Loaded {
    pub manifests: Manifests,
    pub cluster: Cluster,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        !self.manifests.errors.is_empty()
    }
}

/// Reads every path; an unreadable path is an error, a rejected object is reported (on stderr)
/// and skipped.
pub fn load(args: &ManifestArgs) -> anyhow::Result<Loaded> {
    let loaded = load_silently(args)?;
    for error in &loaded.manifests.errors {
        eprintln!("error: {error}");
    }
    if !args.quiet {
        for notice in &loaded.manifests.notices {
            eprintln!("notice: {notice}");
        }
    }
    Ok(loaded)
}

/// Like `load`, but leaves reporting errors and notices to the caller.
pub fn load_silently(args: &ManifestArgs) -> anyhow::Result<Loaded> {
    let mut manifests = Manifests::new();
    let mut texts: Vec<(String, String)> = Vec::new();
    for path in &args.manifests {
        let files = files_under(path)?;
        if files.is_empty() {
            bail!(
                "{}: no *.yaml or *.yml files in this directory",
                path.display()
            );
        }
        for file in files {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read manifest file {}", file.display()))?;
            texts.push((file.display().to_string(), text));
        }
    }
    // All files at once: large manifest sets are parsed on all cores.
    let refs: Vec<(&str, &str)> = texts
        .iter()
        .map(|(s, t)| (s.as_str(), t.as_str()))
        .collect();
    manifests.add_texts(&refs);
    let cluster = Cluster::from_manifests(&mut manifests);
    Ok(Loaded { manifests, cluster })
}

fn files_under(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            let p = entry.path();
            let hidden = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            if entry
                .file_type()
                .with_context(|| format!("cannot stat {}", p.display()))?
                .is_dir()
            {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads a file, or stdin for `-`.
pub fn read_input(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("cannot read stdin")?;
        Ok(text)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    }
}
