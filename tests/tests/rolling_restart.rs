//! A rolling restart of the routers behind a health-checking balancer refuses no
//! client: on SIGTERM each router first answers `/readyz` with 503 while it still
//! serves (`shutdown_readiness_delay_ms`), the balancer's check takes it out of
//! rotation, and only then do its listeners close.
//!
//! The balancer is modelled as balancers work: it checks `/readyz` of every router on
//! a fixed period and sends each request to a router in rotation. A request that meets
//! a refused or reset connection is a refusal; the test allows none.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::{http_get, wait_until, Etcd, NodeJson, RouterProc, P};

/// How often the balancer checks each router.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// The routers' going-away phase: many check periods, so a check lands inside it
/// however loaded the machine is.
const CONFIG: &str = "[http]\nshutdown_readiness_delay_ms = 3000\n";

/// The balancer: per router, its address and whether its last check passed.
struct Balancer {
    backends: Mutex<Vec<(SocketAddr, bool)>>,
}

impl Balancer {
    fn in_rotation(&self) -> Vec<SocketAddr> {
        let b = self.backends.lock().unwrap();
        b.iter().filter(|(_, up)| *up).map(|(a, _)| *a).collect()
    }

    fn replace(&self, old: SocketAddr, new: SocketAddr) {
        let mut b = self.backends.lock().unwrap();
        for entry in b.iter_mut() {
            if entry.0 == old {
                *entry = (new, false);
            }
        }
    }

    fn check_all(&self) {
        let addrs: Vec<SocketAddr> = self
            .backends
            .lock()
            .unwrap()
            .iter()
            .map(|(a, _)| *a)
            .collect();
        for addr in addrs {
            let up = http_get(addr, "/readyz").is_some_and(|(s, _)| s == 200);
            let mut b = self.backends.lock().unwrap();
            if let Some(e) = b.iter_mut().find(|(a, _)| *a == addr) {
                e.1 = up;
            }
        }
    }
}

#[test]
fn a_rolling_restart_behind_a_health_checking_balancer_refuses_no_client() {
    let etcd = Etcd::start();
    for (id, conns) in [("gw-a", 10), ("gw-b", 20)] {
        etcd.put(
            &format!("{P}/nodes/{id}"),
            &NodeJson::new(id).region("r").conns(conns).build(),
        );
    }
    let mut routers: Vec<RouterProc> = (0..2)
        .map(|_| RouterProc::start(&etcd, CONFIG, &[]))
        .collect();
    let lb = Arc::new(Balancer {
        backends: Mutex::new(routers.iter().map(|r| (r.addr, false)).collect()),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let checker = {
        let (lb, stop) = (lb.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                lb.check_all();
                std::thread::sleep(CHECK_EVERY);
            }
        })
    };
    wait_until(Duration::from_secs(10), "both routers in rotation", || {
        lb.in_rotation().len() == 2
    });
    let (ok, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..2)
        .map(|c| {
            let (lb, stop, ok, refused) = (lb.clone(), stop.clone(), ok.clone(), refused.clone());
            std::thread::spawn(move || {
                let mut n = c;
                while !stop.load(Ordering::Relaxed) {
                    let pool = lb.in_rotation();
                    if pool.is_empty() {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    n += 1;
                    match http_get(pool[n % pool.len()], "/gateways") {
                        Some((200, _)) => ok.fetch_add(1, Ordering::Relaxed),
                        _ => refused.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    // One router at a time: SIGTERM, wait for its exit, start its replacement, wait
    // until the balancer has it in rotation.
    for r in routers.iter_mut() {
        let before = ok.load(Ordering::Relaxed);
        r.proc.signal("TERM");
        assert!(
            r.proc.wait_exit(Duration::from_secs(30)).success(),
            "{}",
            r.proc.output()
        );
        let fresh = RouterProc::start(&etcd, CONFIG, &[]);
        lb.replace(r.addr, fresh.addr);
        wait_until(
            Duration::from_secs(10),
            "the new router in rotation",
            || lb.in_rotation().contains(&fresh.addr),
        );
        assert!(
            ok.load(Ordering::Relaxed) > before,
            "clients were served meanwhile"
        );
        *r = fresh;
    }
    stop.store(true, Ordering::Relaxed);
    checker.join().unwrap();
    for c in clients {
        c.join().unwrap();
    }
    let (ok, refused) = (ok.load(Ordering::Relaxed), refused.load(Ordering::Relaxed));
    assert!(ok > 100, "{ok} requests served");
    assert_eq!(refused, 0, "{refused} of {} requests refused", ok + refused);
}
