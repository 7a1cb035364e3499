//! What a test run that was killed left of its namespaces ([`crate::netns`],
//! [`crate::isps`]): a killed process runs no `Drop`, so its namespaces, the etcd
//! members in them and its link in the host's namespace stay. Such a link holds the
//! same subnet as the next run's and shadows its route (the first route wins), and the
//! next run cannot reach its own etcd.
//!
//! Every namespace and host link of these labs is named after its process (`gl{pid}x…`,
//! `isp{pid}…`). [`sweep`] removes those whose process is gone, before each new lab;
//! [`claim`] refuses, with the owner's name, a subnet that a live process's link holds.

use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use crate::util::stdout_of;

/// Held while labs of dead processes are removed or made
/// ([`crate::netns::leave_as_killed`]): tests of one process may build labs at once
/// (`cargo test` runs them on threads).
static LOCK: Mutex<()> = Mutex::new(());

/// Holds [`LOCK`].
pub(crate) fn hold() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The process a lab name was made by: the digits after `gl` or `isp`.
fn owner(name: &str) -> Option<u32> {
    let rest = name
        .strip_prefix("gl")
        .or_else(|| name.strip_prefix("isp"))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// True when `name` is a lab's and the process that made it is gone: no process has
/// its id (a thread of another process may, since `/proc` lists threads too).
fn stale(name: &str) -> bool {
    owner(name).is_some_and(|pid| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let tgid = format!("Tgid:\t{pid}");
        !status.lines().any(|l| l == tgid)
    })
}

/// Links of the host's namespace that have IPv4 addresses: (name, its addresses with
/// their prefix length).
fn host_links() -> Vec<(String, Vec<String>)> {
    stdout_of("ip", &["-br", "-4", "addr"])
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            // `name@ifN` for a veth.
            let name = words.next()?.split('@').next()?.to_string();
            let addrs = words.skip(1).map(str::to_string).collect();
            Some((name, addrs))
        })
        .collect()
}

/// Removes the namespaces (and every process in them) and host links of labs whose
/// process is gone; the labs of this process (and of any live one) stay.
pub(crate) fn sweep() {
    let _held = hold();
    for ns in stdout_of("ip", &["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| stale(ns))
    {
        for pid in stdout_of("ip", &["netns", "pids", ns]).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).output();
        }
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
        eprintln!("removed namespace {ns}, left by a test process that is gone");
    }
    let links = stdout_of("ip", &["-br", "link"]);
    let names = links.lines().filter_map(|l| l.split(['@', ' ']).next());
    for link in names.filter(|l| stale(l)) {
        let _ = Command::new("ip").args(["link", "del", link]).output();
        eprintln!("removed link {link}, left by a test process that is gone");
    }
}

/// Panics, naming the holder, when a link other than `own` already has an address in
/// `subnet` (e.g. `"10.77.72."`): a live lab of another test process is using it, and
/// this one's route would be shadowed by (or shadow) that one's.
pub(crate) fn claim(subnet: &str, own: &str) {
    for (link, addrs) in host_links() {
        if link != own && addrs.iter().any(|a| a.starts_with(subnet)) {
            panic!(
                "{subnet}0/24 is already on link {link} ({addrs:?}): the lab of another test \
                 process on this machine, alive (process {:?}), uses these addresses; run one \
                 suite at a time, or `ip link del {link}` if that process is not a test",
                owner(&link)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_is_read_from_a_labs_names() {
        assert_eq!(owner("gl6702x0h"), Some(6702));
        assert_eq!(owner("gl26457x0-hub"), Some(26457));
        assert_eq!(owner("isp812-a"), Some(812));
        assert_eq!(owner("isp812h"), Some(812));
        assert_eq!(owner("eth0"), None);
        assert_eq!(owner("glx"), None);
        assert!(!stale("eth0"));
        assert!(!stale(&format!("gl{}x0h", std::process::id())));
    }
}
