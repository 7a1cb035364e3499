use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use gateway_api::Proto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use std::time::Duration;

use gateway_api::{Outcome, OutcomeKind, OutcomeReport, MAX_OUTCOMES, MAX_REPORT_BYTES};
use tokio::time::Instant;

use crate::answer::{BackoffParams, Gateway, RouterAnswer, Source};
use crate::client::Client;
use crate::dns::{DnsSource, Ipv6Mode};
use crate::error::{Failure, FailureKind};
use crate::outcomes::*;
use crate::race::{Lost, Won};
use crate::Config;

/// A router on loopback: answers every `GET /gateways` with the same answer and
/// `POST /outcomes` with 204, handing each report's head and body to the test.
struct FakeRouter {
    addr: SocketAddr,
    gets: Arc<AtomicUsize>,
    reports: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
}

impl FakeRouter {
    async fn start(answer: &RouterAnswer) -> FakeRouter {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = serde_json::to_string(answer).unwrap();
        let gets = Arc::new(AtomicUsize::new(0));
        let (tx, reports) = mpsc::unbounded_channel();
        let counted = gets.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                tokio::spawn(serve(s, body.clone(), counted.clone(), tx.clone()));
            }
        });
        FakeRouter {
            addr,
            gets,
            reports,
        }
    }

    /// A client of this router, recording every connect and reporting at every
    /// router answer.
    fn config(&self) -> Config {
        let mut c = Config::new(self.addr.ip().to_string());
        c.router_https = false;
        c.router_port = self.addr.port();
        c.dns.local_fallback = false;
        c.dns.ipv6 = Ipv6Mode::Never;
        c.router_attempt_timeout = Duration::from_secs(10);
        c.router_budget = Duration::from_secs(10);
        c.deadline = Duration::from_secs(20);
        c.connect_timeout = Duration::from_secs(10);
        c.report_sample = 1.0;
        c.report_interval = Duration::ZERO;
        c
    }

    fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    /// The next report: its head, and its body read as a report.
    async fn report(&mut self) -> (String, OutcomeReport) {
        let (head, body) = tokio::time::timeout(Duration::from_secs(20), self.reports.recv())
            .await
            .expect("a report within 20 s")
            .expect("the router runs");
        (
            head,
            serde_json::from_slice(&body).expect("an OutcomeReport"),
        )
    }

    /// True when no report arrived (so far).
    fn no_report(&mut self) -> bool {
        self.reports.try_recv().is_err()
    }
}

/// One connection to the fake router: requests kept alive until the client closes.
async fn serve(
    mut s: TcpStream,
    answer: String,
    gets: Arc<AtomicUsize>,
    reports: mpsc::UnboundedSender<(String, Vec<u8>)>,
) {
    loop {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let length = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.trim().parse::<usize>().unwrap());
        let mut body = vec![0u8; length];
        if s.read_exact(&mut body).await.is_err() {
            return;
        }
        let reply = if head.starts_with("GET /gateways?") {
            gets.fetch_add(1, Ordering::SeqCst);
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                answer.len()
            )
        } else if head.starts_with("POST /outcomes HTTP/1.1\r\n") {
            let _ = reports.send((head, body));
            "HTTP/1.1 204 No Content\r\n\r\n".to_string()
        } else {
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_string()
        };
        if s.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn gateway(id: &str, addr: SocketAddr, domain: Option<&str>) -> Gateway {
    Gateway {
        id: id.into(),
        ip: addr.ip(),
        port: addr.port(),
        proto: Proto::Tcp,
        region: "r".into(),
        dc: None,
        isp: None,
        domain: domain.map(Into::into),
        load: 0.1,
    }
}

fn answer(gateways: Vec<Gateway>) -> RouterAnswer {
    RouterAnswer {
        gateways,
        region: Some("r".into()),
        ttl_secs: 300,
        heartbeat_secs: 30,
        backoff: BackoffParams::default(),
        revision: 1,
        stale: false,
    }
}

/// An address where nothing listens: connecting to it is refused.
fn refusing() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The gateway ids and results of a report.
fn results(r: &OutcomeReport) -> Vec<(&str, OutcomeKind)> {
    r.outcomes
        .iter()
        .map(|o| (o.gateway.as_str(), o.result))
        .collect()
}

/// A refusing candidate then a live one; the listener must be kept.
async fn refused_then_live() -> (TcpListener, RouterAnswer) {
    let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = answer(vec![
        gateway("gw-refusing", refusing(), None),
        gateway("gw-live", live.local_addr().unwrap(), None),
    ]);
    (live, a)
}

#[tokio::test]
async fn a_reconnect_reports_the_last_connects_outcomes_to_the_router() {
    let (_live, a) = refused_then_live().await;
    let mut router = FakeRouter::start(&a).await;
    let client = Client::new(router.config()).unwrap();
    let first = client.connect().await.unwrap();
    assert_eq!(first.gateway.id, "gw-live");
    assert_eq!(client.inner.outcomes.len(), 2);
    assert!(router.no_report(), "nothing to report at the first answer");

    let second = client.connect().await.unwrap();
    assert_eq!(second.gateway.id, "gw-live");
    assert_eq!(router.gets(), 2, "a reconnect asks the router again");
    let (head, report) = router.report().await;
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json\r\n"),
        "{head}"
    );
    assert_eq!(
        results(&report),
        [
            ("gw-refusing", OutcomeKind::Refused),
            ("gw-live", OutcomeKind::Ok)
        ]
    );
    assert!(report.outcomes.iter().all(|o| o.ms < 10_000), "{report:?}");
    // The second connect's outcomes wait for the next router answer.
    assert_eq!(client.inner.outcomes.len(), 2);
    assert!(router.no_report(), "one report");
}

#[tokio::test]
async fn nothing_is_recorded_or_posted_with_report_outcomes_off() {
    let (_live, a) = refused_then_live().await;
    let mut router = FakeRouter::start(&a).await;
    let mut c = router.config();
    c.report_outcomes = false;
    let client = Client::new(c).unwrap();
    for _ in 0..3 {
        assert_eq!(client.connect().await.unwrap().gateway.id, "gw-live");
        assert_eq!(client.inner.outcomes.len(), 0);
    }
    assert_eq!(router.gets(), 3);
    assert!(router.no_report());
    // Even outcomes that were somehow waiting are never sent.
    client.inner.outcomes.record(vec![Outcome {
        gateway: "gw-live".into(),
        result: OutcomeKind::Ok,
        ms: 1,
    }]);
    client.report_outcomes(router.addr);
    assert_eq!(client.inner.outcomes.len(), 1);
}

#[tokio::test]
async fn reconnects_within_the_interval_send_one_report_and_the_buffer_stays_bounded() {
    let (_live, a) = refused_then_live().await;
    let mut router = FakeRouter::start(&a).await;
    let mut c = router.config();
    c.report_interval = Duration::from_secs(3600);
    let client = Client::new(c).unwrap();
    client.connect().await.unwrap();
    client.connect().await.unwrap();
    let (_, report) = router.report().await;
    assert_eq!(report.outcomes.len(), 2);
    // 2 outcomes a connect: the buffer fills within the hour and stays full.
    for n in 0..MAX_OUTCOMES {
        client.connect().await.unwrap();
        assert_eq!(
            client.inner.outcomes.len(),
            (2 * (n + 2)).min(MAX_OUTCOMES),
            "after reconnect {n}"
        );
    }
    assert_eq!(router.gets(), MAX_OUTCOMES + 2);
    assert!(router.no_report(), "one report within the interval");
}

#[tokio::test(start_paused = true)]
async fn the_buffer_keeps_the_oldest_32_and_a_report_waits_out_the_interval() {
    let outcomes = Outcomes::default();
    let one = |i: usize| Outcome {
        gateway: format!("gw-{i}"),
        result: OutcomeKind::Ok,
        ms: 1,
    };
    assert_eq!(outcomes.take_due(Duration::from_secs(30)), None, "empty");
    outcomes.record((0..20).map(one).collect());
    outcomes.record((20..40).map(one).collect());
    let first = outcomes.take_due(Duration::from_secs(30)).unwrap();
    assert_eq!(first, (0..MAX_OUTCOMES).map(one).collect::<Vec<_>>());
    outcomes.record(vec![one(40)]);
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(outcomes.take_due(Duration::from_secs(30)), None);
    assert_eq!(outcomes.len(), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        outcomes.take_due(Duration::from_secs(30)),
        Some(vec![one(40)])
    );
    assert_eq!(outcomes.len(), 0);
}

#[test]
fn a_race_reports_started_attempts_only_and_never_a_pinned_out_domain() {
    let gws: Vec<Gateway> = (0..7)
        .map(|i| gateway(&format!("gw-{i}"), "192.0.2.1:1".parse().unwrap(), None))
        .collect();
    let mut long = gws.clone();
    long[2].id = "x".repeat(MAX_ID_BYTES + 1);
    let ms = Duration::from_millis;
    let t0 = Instant::now();
    let fail = |kind| Failure::new("t", kind);
    let won: Result<Won<(), Failure>, Lost<Failure>> = Ok(Won {
        value: (),
        index: 4,
        took: ms(40),
        failures: vec![
            (0, fail(FailureKind::DomainNotAllowed("d".into())), ms(0)),
            (1, fail(FailureKind::Refused), ms(1)),
            (2, fail(FailureKind::TimedOut), ms(2)),
            (3, fail(FailureKind::Tls("bad".into())), ms(3)),
            (5, fail(FailureKind::Other("reset".into())), ms(5)),
        ],
        pending: vec![(6, t0)],
    });
    let got = race_outcomes(&gws, &won, t0 + ms(300));
    let got: Vec<_> = got
        .iter()
        .map(|o| (o.gateway.as_str(), o.result, o.ms))
        .collect();
    use OutcomeKind as K;
    assert_eq!(
        got,
        [
            ("gw-1", K::Refused, 1),
            ("gw-2", K::Timeout, 2),
            ("gw-3", K::Tls, 3),
            ("gw-5", K::Other, 5),
            ("gw-4", K::Ok, 40),
            ("gw-6", K::Timeout, 300),
        ]
    );
    assert_eq!(
        race_outcomes(&long, &won, t0).len(),
        5,
        "a long id is left out"
    );
    let lost: Result<Won<(), Failure>, Lost<Failure>> = Err(Lost {
        failures: vec![(1, fail(FailureKind::Refused), ms(1))],
        untried: vec![2],
        timed_out: false,
    });
    assert_eq!(
        race_outcomes(&gws, &lost, t0),
        [Outcome {
            gateway: "gw-1".into(),
            result: K::Refused,
            ms: 1
        }]
    );
}

#[test]
fn a_report_body_stays_within_the_routers_limit() {
    let full = |id: String| -> Vec<Outcome> {
        (0..MAX_OUTCOMES)
            .map(|_| Outcome {
                gateway: id.clone(),
                result: OutcomeKind::Timeout,
                ms: u32::MAX,
            })
            .collect()
    };
    let plain = report_body(full("g".repeat(MAX_ID_BYTES)));
    assert!(plain.len() <= MAX_REPORT_BYTES, "{}", plain.len());
    let r: OutcomeReport = serde_json::from_slice(&plain).unwrap();
    assert_eq!(
        r.outcomes.len(),
        MAX_OUTCOMES,
        "32 outcomes of 128-byte ids fit"
    );
    // Control characters are escaped six bytes each: not all fit, and the body stays
    // within the limit.
    let escaped = report_body(full("\u{1}".repeat(MAX_ID_BYTES)));
    assert!(escaped.len() <= MAX_REPORT_BYTES, "{}", escaped.len());
    let r: OutcomeReport = serde_json::from_slice(&escaped).unwrap();
    assert!(!r.outcomes.is_empty() && r.outcomes.len() < MAX_OUTCOMES);
    assert_eq!(sample_share(f64::NAN), 0.0);
    assert_eq!(sample_share(7.0), 1.0);
    assert_eq!(sample_share(-1.0), 0.0);
}

#[test]
fn only_a_routers_candidates_are_recorded() {
    let mut c = Config::new("r.example");
    c.report_sample = 1.0;
    c.prefetch_router = false;
    let client = Client::new(c).unwrap();
    let router = Source::Router {
        addr: "192.0.2.1:443".parse().unwrap(),
        dns: DnsSource::HttpDns,
    };
    assert!(client.records_outcomes(&router));
    assert!(!client.records_outcomes(&Source::CacheFile));
    assert!(!client.records_outcomes(&Source::FallbackDomain {
        dns: DnsSource::HttpDns
    }));
    let mut c = Config::new("r.example");
    c.report_sample = 0.0;
    c.prefetch_router = false;
    assert!(!Client::new(c).unwrap().records_outcomes(&router));
}

/// A TLS gateway on loopback for `name`, signed by a new CA: its address, and the CA
/// (PEM) for the client's `extra_roots`.
async fn tls_gateway(name: &str) -> (SocketAddr, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "outcomes test CA");
    let ca =
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(s).await {
                    let mut sink = [0u8; 64];
                    while tls.read(&mut sink).await.is_ok_and(|n| n > 0) {}
                }
            });
        }
    });
    (addr, ca.pem())
}

#[tokio::test]
async fn a_domain_outside_the_pins_is_not_reported() {
    let (tls, ca) = tls_gateway("a.gw.test").await;
    let a = answer(vec![
        gateway("gw-pinned-out", tls, Some("evil.test")),
        gateway("gw-tls", tls, Some("a.gw.test")),
    ]);
    let mut router = FakeRouter::start(&a).await;
    let mut c = router.config();
    c.gateway_domain_suffixes = vec![".gw.test".into()];
    c.add_roots_pem(ca.as_bytes()).unwrap();
    let client = Client::new(c).unwrap();
    let first = client.connect_tls().await.unwrap();
    assert_eq!(first.gateway.id, "gw-tls");
    client.connect_tls().await.unwrap();
    let (_, report) = router.report().await;
    assert_eq!(results(&report), [("gw-tls", OutcomeKind::Ok)]);
}
