//! Command line: clap stops here; the rest of the crate takes typed options.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// baofs: OpenBao secrets as a live, read-only FUSE filesystem.
#[derive(Debug, Parser)]
#[command(name = "baofs", version, about)]
pub struct Cli {
    /// Log as JSON lines (upstream's --log-format-json).
    #[arg(long, global = true)]
    pub log_format_json: bool,
    /// Log filter, e.g. `info`, `baofs=debug` (also RUST_LOG).
    #[arg(long, global = true, env = "RUST_LOG", default_value = "info")]
    pub log_level: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount one secret volume described by a SecretProviderClass file, without Kubernetes.
    Mount(MountArgs),
}

/// `baofs mount`.
#[derive(Debug, Args)]
pub struct MountArgs {
    /// SecretProviderClass YAML file (secrets-store.csi.x-k8s.io/v1).
    #[arg(long, value_name = "FILE")]
    pub spc: PathBuf,
    /// Directory to mount the volume at (must exist and not be a mount point).
    #[arg(long, value_name = "DIR")]
    pub target: PathBuf,
    /// Namespace of the SPC (default: the SPC's metadata.namespace).
    #[arg(long)]
    pub namespace: Option<String>,
    /// File holding an OpenBao token to use directly (default: $BAO_TOKEN).
    #[arg(long, value_name = "FILE", conflicts_with = "jwt_file")]
    pub token_file: Option<PathBuf>,
    /// File holding a JWT (service-account token) to log in with the SPC's roleName.
    #[arg(long, value_name = "FILE")]
    pub jwt_file: Option<PathBuf>,
    /// How often to refetch every object (e.g. 500ms, 30s, 2m).
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    pub rotation_poll_interval: Duration,
    /// Directory for the FUSE hub mount and node-local state (no secret is ever written).
    #[arg(long, value_name = "DIR", default_value = "/run/baofs")]
    pub state_dir: PathBuf,
    /// Owner of the files.
    #[arg(long, default_value_t = 0)]
    pub uid: u32,
    /// Group of the files.
    #[arg(long, default_value_t = 0)]
    pub gid: u32,
    /// Largest value accepted for one object, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pub max_object_size: usize,
    /// Timeout of one OpenBao request.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// How long to retry a failing OpenBao request (5xx, unreachable) before giving up.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub retry_deadline: Duration,
}

/// Parses Go-style durations: `500ms`, `30s`, `2m`, `1h`, `1m30s`, `1.5s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration '{s}' (examples: 500ms, 30s, 2m, 1h30m)");
    let s = s.trim();
    if s.is_empty() {
        return Err(bad());
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_end == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    if !total.is_finite() || total > 1e9 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in ["", "5", "s", "5x", "-1s", "1s2"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cli_parses_mount() {
        let cli = Cli::try_parse_from([
            "baofs",
            "mount",
            "--spc",
            "a.yaml",
            "--target",
            "/mnt/x",
            "--rotation-poll-interval",
            "500ms",
        ])
        .expect("parses");
        let Command::Mount(m) = cli.command;
        assert_eq!(m.rotation_poll_interval, Duration::from_millis(500));
        assert!(
            Cli::try_parse_from([
                "baofs",
                "mount",
                "--spc",
                "a",
                "--target",
                "b",
                "--token-file",
                "t",
                "--jwt-file",
                "j"
            ])
            .is_err()
        );
    }
}
