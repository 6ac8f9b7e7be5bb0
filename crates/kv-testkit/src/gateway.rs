//! The gateway of compose/ and the chart (nginx with the project's routes,
//! deploy/helm/kafka-kv/files/gateway-routes.conf) in front of a running writer and reader, as a
//! child process on a free local port. nginx is Debian's, installed by
//! scripts/install-client-tools.sh, which exports where it is as `KV_NGINX`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::services::Service;

/// The routes file, as the chart and compose use it.
pub const ROUTES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/helm/kafka-kv/files/gateway-routes.conf"
);

/// nginx routing to a writer and a reader; stopped and its folder removed on drop.
#[derive(Debug)]
pub struct Gateway {
    child: Child,
    dir: PathBuf,
    pub base_url: String,
}

/// `host:port` of a service.
fn authority(service: &Service) -> &str {
    service
        .base_url
        .strip_prefix("http://")
        .expect("an http:// service")
}

impl Gateway {
    /// Starts nginx with the project's routes in front of `writer` and `reader` and waits until
    /// it answers.
    pub fn start(writer: &Service, reader: &Service) -> Gateway {
        let nginx = std::env::var("KV_NGINX").unwrap_or_else(|_| {
            panic!(
                "KV_NGINX is not set: run `eval \"$(scripts/install-client-tools.sh)\"` (make \
                 test does) to install nginx"
            )
        });
        let port = crate::free_port();
        let dir = std::env::temp_dir().join(format!("kv-gateway-{}-{port}", std::process::id()));
        std::fs::create_dir_all(dir.join("tmp")).expect("the gateway's folder");
        let d = dir.display();
        // nginx's workers run as another user when the tests run as root: everything they
        // read is readable by all (temp_dir() folders are).
        let config = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n\
               client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n\
               fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n\
               upstream kv_writer {{ server {writer}; keepalive 4; }}\n\
               upstream kv_reader {{ server {reader}; keepalive 4; }}\n\
               server {{\n    listen 127.0.0.1:{port};\n    include {routes};\n  }}\n}}\n",
            writer = authority(writer),
            reader = authority(reader),
            routes = ROUTES,
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config).expect("write nginx.conf");
        let child = Command::new(&nginx)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("start {nginx}: {error}"));
        let gateway = Gateway {
            child,
            dir,
            base_url: format!("http://127.0.0.1:{port}"),
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "nginx did not listen on {port}: {}",
                gateway.error_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        gateway
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// What nginx logged.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // SIGTERM: the master stops its worker too (SIGKILL would leave it listening).
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .ok();
        let start = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(25));
        }
        self.child.kill().ok();
        self.child.wait().ok();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}
