//! Command line: clap stops here; the rest of the crate takes typed options.

use std::path::PathBuf;
use std::time::Duration;

use crate::provider::openbao::OpenBaoConfig;
use clap::{ArgAction, Args, Parser, Subcommand};

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
    /// Show every volume served by the baofs processes of this node (never a value).
    Status(StatusArgs),
    /// Serve the CSI node plugin to kubelet (drop-in for secrets-store.csi.k8s.io).
    Csi(CsiArgs),
    /// Keep /dev/fuse fds alive across driver restarts (start first, leave running).
    Holder(HolderArgs),
}

/// `baofs holder`.
#[derive(Debug, Args)]
pub struct HolderArgs {
    /// Directory of the holder socket `holder.sock` (created 0700 if missing); the same
    /// `--state-dir` as the driver's.
    #[arg(long, value_name = "DIR", default_value = "/run/baofs")]
    pub state_dir: PathBuf,
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
    /// How the OpenBao provider talks to OpenBao.
    #[command(flatten)]
    pub openbao: OpenBaoArgs,
}

/// `baofs csi`. Flag names and defaults follow the upstream Secrets Store CSI Driver.
#[derive(Debug, Args)]
pub struct CsiArgs {
    /// CSI endpoint: `unix:///path/to/csi.sock` (or a bare path). The socket gets mode 0600; a
    /// stale socket there is replaced, anything else is an error.
    #[arg(long, value_name = "ENDPOINT", default_value = "unix:///csi/csi.sock")]
    pub endpoint: String,
    /// Node name reported by NodeGetInfo (the chart passes `spec.nodeName`).
    #[arg(long, value_name = "NAME")]
    pub nodeid: String,
    /// CSI driver name: pods name it in `volumes[].csi.driver`.
    #[arg(long, value_name = "NAME", default_value = "secrets-store.csi.k8s.io")]
    pub drivername: String,
    /// Refetch every volume's objects every --rotation-poll-interval (upstream default: false).
    /// Accepts `--enable-secret-rotation`, `--enable-secret-rotation=true|false`.
    #[arg(
        long,
        action = ArgAction::Set,
        default_value_t = false,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub enable_secret_rotation: bool,
    /// How often to refetch when rotation is enabled (e.g. 500ms, 30s, 2m).
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    pub rotation_poll_interval: Duration,
    /// Prometheus metrics at `GET /metrics` (`host:port` or `:port`; empty disables).
    #[arg(long, value_name = "ADDR", default_value = ":8095")]
    pub metrics_addr: String,
    /// Read SecretProviderClasses from `DIR/<namespace>/<name>.yaml` instead of the Kubernetes
    /// API (tests, orchestrators without Kubernetes).
    #[arg(long, value_name = "DIR")]
    pub spc_dir: Option<PathBuf>,
    /// kubeconfig for the Kubernetes API: SPCs, synced Secrets, pod status, events, TokenRequest
    /// (default: in-cluster config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Directory for the FUSE hub mount and node-local state (no secret is ever written).
    #[arg(long, value_name = "DIR", default_value = "/run/baofs")]
    pub state_dir: PathBuf,
    /// How the OpenBao provider talks to OpenBao.
    #[command(flatten)]
    pub openbao: OpenBaoArgs,
}

/// `baofs status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// State directory of the driver(s) to ask.
    #[arg(long, value_name = "DIR", default_value = "/run/baofs")]
    pub state_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// OpenBao client settings shared by `mount` and `csi`.
#[derive(Debug, Args)]
pub struct OpenBaoArgs {
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

impl OpenBaoArgs {
    /// The provider configuration (address fallback from BAO_ADDR/VAULT_ADDR).
    pub fn config(&self) -> OpenBaoConfig {
        OpenBaoConfig {
            default_address: OpenBaoConfig::env_address(),
            request_timeout: self.request_timeout,
            retry_deadline: self.retry_deadline,
            max_object_size: self.max_object_size,
            share_window: Duration::ZERO,
        }
    }
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
        let Command::Mount(m) = cli.command else {
            panic!("expected mount");
        };
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

    #[test]
    fn cli_parses_csi_with_upstream_flags() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["baofs", "csi", "--nodeid", "node-1"];
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).map(|c| c.command) {
                Ok(Command::Csi(a)) => Ok(a),
                Ok(other) => panic!("parsed as {other:?}"),
                Err(e) => Err(e),
            }
        };
        let d = parse(&[]).expect("defaults");
        assert_eq!(d.endpoint, "unix:///csi/csi.sock");
        assert_eq!(d.drivername, "secrets-store.csi.k8s.io");
        assert!(!d.enable_secret_rotation);
        assert_eq!(d.rotation_poll_interval, Duration::from_secs(120));
        assert_eq!(d.metrics_addr, ":8095");
        assert_eq!(d.state_dir, PathBuf::from("/run/baofs"));
        assert!(d.spc_dir.is_none());
        for (flag, want) in [
            ("--enable-secret-rotation=true", true),
            ("--enable-secret-rotation=false", false),
            ("--enable-secret-rotation", true),
        ] {
            assert_eq!(
                parse(&[flag]).expect(flag).enable_secret_rotation,
                want,
                "{flag}"
            );
        }
        let a = parse(&[
            "--endpoint=unix:///tmp/x.sock",
            "--rotation-poll-interval=500ms",
            "--spc-dir",
            "/spc",
            "--metrics-addr=:9000",
        ])
        .expect("parses");
        assert_eq!(a.endpoint, "unix:///tmp/x.sock");
        assert_eq!(a.rotation_poll_interval, Duration::from_millis(500));
        assert_eq!(a.spc_dir, Some(PathBuf::from("/spc")));
        assert!(
            Cli::try_parse_from(["baofs", "csi"]).is_err(),
            "--nodeid is required"
        );
        assert!(parse(&["--enable-secret-rotation=maybe"]).is_err());
    }

    #[test]
    fn cli_parses_holder() {
        match Cli::try_parse_from(["baofs", "holder", "--state-dir", "/x"]).map(|c| c.command) {
            Ok(Command::Holder(a)) => assert_eq!(a.state_dir, PathBuf::from("/x")),
            other => panic!("parsed as {other:?}"),
        }
    }
}
