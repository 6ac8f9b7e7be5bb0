//! A network namespace of the drill's own, joined to the host by a veth pair, to put a broker
//! behind a link the drill can cut, with nothing but the machine's iproute2. It needs root (or
//! CAP_NET_ADMIN); [`NetNamespace::create`] says why it could not. Removed on drop, panics
//! included; namespaces left by a run that was killed are removed by the next one.

use std::process::Command;

/// Every namespace of the kit is named `<PREFIX><pid>-<n>`, so a stale one is known by its pid.
const PREFIX: &str = "kvdrill-";

#[derive(Debug)]
pub struct NetNamespace {
    name: String,
    /// The veth end inside the namespace: taking it down cuts the link.
    inner_if: String,
    inner_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed (it needs root or CAP_NET_ADMIN): {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Removes the kit's namespaces whose process is gone (a drill killed before its drop ran).
fn remove_stale() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl NetNamespace {
    /// Creates the namespace and its link to the host; `n` tells two of one process apart.
    pub fn create(n: u8) -> Result<NetNamespace, String> {
        remove_stale();
        let pid = std::process::id();
        let name = format!("{PREFIX}{pid}-{n}");
        // Interface names are at most 15 bytes and global on the host side.
        let host_if = format!("kvd{:x}{n}h", pid & 0xff_ffff);
        let inner_if = format!("kvd{:x}{n}n", pid & 0xff_ffff);
        // A /30 of 10.223.0.0/16 picked by pid and n: runs of other processes rarely meet.
        let block = (pid.wrapping_mul(7).wrapping_add(u32::from(n))) % 16384;
        let (third, fourth) = (block / 64, (block % 64) * 4);
        let host_ip = format!("10.223.{third}.{}", fourth + 1);
        let inner_ip = format!("10.223.{third}.{}", fourth + 2);
        ip(&["netns", "add", &name])?;
        let namespace = NetNamespace {
            name,
            inner_if,
            inner_ip,
        };
        let ns = namespace.name.as_str();
        let inner = namespace.inner_if.as_str();
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", inner,
        ])?;
        ip(&["link", "set", inner, "netns", ns])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", ns, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&[
            "addr",
            "add",
            &format!("{}/30", namespace.inner_ip),
            "dev",
            inner,
        ])?;
        inside(&["link", "set", inner, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(namespace)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's address, as the host reaches it.
    pub fn ip(&self) -> &str {
        &self.inner_ip
    }

    /// Takes the namespace's end of the link down: the host's end stays up with its route, so
    /// packets are dropped rather than refused, as in a partition.
    pub fn cut(&self) {
        ip(&[
            "netns",
            "exec",
            &self.name,
            "ip",
            "link",
            "set",
            &self.inner_if,
            "down",
        ])
        .expect("cut the link");
    }

    pub fn heal(&self) {
        ip(&[
            "netns",
            "exec",
            &self.name,
            "ip",
            "link",
            "set",
            &self.inner_if,
            "up",
        ])
        .expect("heal the link");
    }
}

impl Drop for NetNamespace {
    fn drop(&mut self) {
        // Deleting the namespace destroys its veth end, and with it the host's.
        let _ = ip(&["netns", "del", &self.name]);
    }
}
