//! A real `redis-server` for the cluster tests: started on a free loopback
//! port with its own directory, stopped (killed) when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::wait_until;

/// A `redis-server` process.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    persistent: bool,
    cluster: bool,
}

/// Whether `redis-server` can be run here. Under CI
/// (`WSPUSH_REQUIRE_REDIS=1`) its absence fails the test instead.
pub fn available() -> bool {
    let ok = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("WSPUSH_REQUIRE_REDIS").is_err(),
            "redis-server is required (WSPUSH_REQUIRE_REDIS is set) but cannot be run"
        );
        eprintln!("redis-server not found: skipping");
    }
    ok
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    /// A Redis without persistence (a restart loses everything).
    pub fn start() -> Redis {
        Redis::start_with(false)
    }

    /// With `persistent`, every write is in the append-only file before it
    /// is answered (`appendfsync always`): a restart keeps it.
    pub fn start_with(persistent: bool) -> Redis {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("wspush-redis-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Redis {
            child: None,
            port,
            dir,
            persistent,
            cluster: false,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let extra = if self.cluster {
            vec![
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ]
        } else {
            Vec::new()
        };
        self.spawn_with(&extra);
    }

    fn spawn_with(&mut self, extra: &[&str]) {
        if !extra.is_empty() {
            self.cluster = true;
        }
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.args(extra);
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        self.child = Some(cmd.spawn().expect("spawn redis-server"));
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(10), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            }),
            "redis-server did not start"
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kill it (SIGKILL: no goodbye to its clients).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Run a command with `redis-cli`; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of three masters (no replicas) on free loopback ports,
/// each with an append-only file fsynced on every write.
pub struct RedisCluster {
    pub masters: Vec<Redis>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let mut masters = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let dir =
                std::env::temp_dir().join(format!("wspush-rcluster-{}-{port}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let mut r = Redis {
                child: None,
                port,
                dir,
                persistent: true,
                cluster: true,
            };
            r.spawn_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ]);
            masters.push(r);
        }
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(masters.iter().map(|m| format!("127.0.0.1:{}", m.port)));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        let out = Command::new("redis-cli")
            .args(&args)
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = RedisCluster { masters };
        assert!(
            wait_until(Duration::from_secs(20), || c
                .masters
                .iter()
                .all(|m| m.cli(&["cluster", "info"]).contains("cluster_state:ok"))),
            "the cluster did not come up"
        );
        c
    }

    /// `redis+cluster://` with every master as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .masters
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// Wait until every master says the cluster is whole.
    pub fn wait_ok(&self) -> bool {
        wait_until(Duration::from_secs(20), || {
            self.masters
                .iter()
                .all(|m| m.cli(&["cluster", "info"]).contains("cluster_state:ok"))
        })
    }
}
