//! `switchyard run`: load and check the configuration, open the audit log, start the issuer
//! links (and simulated issuers), bind the listeners and the admin endpoint, then wait for
//! signals. SIGTERM/SIGINT drain: not ready, stop accepting, finish what is in flight within
//! the grace period, flush the audit log, exit 0. SIGHUP reloads routes and certificates,
//! keeping the old ones on any error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use switchyard_audit::{AuditConfig, AuditKeys, AuditLog, RecordKind, DEMO_WARNING};
use switchyard_mux::{Acceptor, ClientTls, Endpoint, IssuerLink, ServerTls};
use switchyard_router::{Integrity, Router, SafQueue, TerminalHandler};
use switchyard_sim::{IssuerSim, IssuerSimConfig};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::codec_cmd::{fail, CmdResult, EX_CONFIG, EX_IOERR, EX_NOINPUT, EX_USAGE};
use crate::config;
use crate::notify;
use crate::telemetry::{init_logging, Sources, Telemetry};

struct Switch {
    router: Arc<Router<IssuerLink>>,
    telemetry: Telemetry,
    sources: Sources,
    draining: AtomicBool,
    listeners_bound: AtomicBool,
}

impl AdminState for Switch {
    fn metrics(&self) -> Vec<u8> {
        self.telemetry
            .ready
            .set(i64::from(self.readiness().is_ok()));
        self.telemetry.render(&self.sources)
    }

    fn saf_list(&self) -> Option<String> {
        let saf = self.sources.saf.as_ref()?;
        serde_json::to_string(&saf.list()).ok()
    }

    async fn saf_action(&self, id: u64, operator: &str, drop: bool) -> Result<(), String> {
        let saf = self
            .sources
            .saf
            .as_ref()
            .ok_or("store-and-forward is off")?;
        saf.operator(id, operator, drop).await?;
        let action = serde_json::json!({
            "action": if drop { "saf-drop" } else { "saf-retry" },
            "id": id,
            "operator": operator,
            "at_us": switchyard_router::now_us(),
        });
        // The operator's action goes to the audit log as well as the queue's journal.
        self.router
            .audit()
            .append_record(RecordKind::Operator, &action)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn cut_over(&self, operator: &str) -> Result<String, String> {
        let day = self
            .router
            .business_day()
            .ok_or("no [business_day] in the configuration")?;
        let now = switchyard_router::now_us();
        let (closed, opened) = day.cut_over(now);
        let event =
            switchyard_router::business_day::BusinessDay::event(closed, opened, operator, now);
        tracing::info!(operator, closed = %switchyard_router::business_day::date_text(closed), opened = %switchyard_router::business_day::date_text(opened), "cut-over by hand");
        self.router
            .audit()
            .append_record(RecordKind::Event, &event)
            .await
            .map_err(|e| e.to_string())?;
        Ok(switchyard_router::business_day::date_text(opened))
    }

    fn readiness(&self) -> Result<(), Vec<String>> {
        let mut reasons = Vec::new();
        if self.draining.load(Ordering::Acquire) {
            reasons.push("draining".to_string());
        }
        if !self.listeners_bound.load(Ordering::Acquire) {
            reasons.push("listeners not bound".to_string());
        }
        if !self.sources.links.iter().any(|(_, l, _)| l.is_ready()) {
            reasons.push("no issuer link ready".to_string());
        }
        if self.sources.audit.is_failed() {
            reasons.push("audit log failed".to_string());
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}

/// A terminal listener with a deep accept queue: terminals reconnect in bursts (after a
/// network blip or a restart), and a full queue costs each extra terminal a one-second SYN
/// retransmission.
fn bind_terminals(addr: &str) -> std::io::Result<TcpListener> {
    let addr: std::net::SocketAddr = addr.parse().map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an address:port")
    })?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// `switchyard check-config FILE`.
pub fn check_config(path: &Path) -> CmdResult {
    readable(path)?;
    match config::load(Some(path)) {
        Ok(plan) => {
            println!(
                "{}: ok ({} listeners, {} links, {} routes)",
                path.display(),
                plan.listeners.len(),
                plan.links.len(),
                plan.config.routes.len()
            );
            Ok(())
        }
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            Err(fail(EX_CONFIG)(anyhow!(
                "{}: {} problem(s)",
                path.display(),
                problems.len()
            )))
        }
    }
}

/// `switchyard run [--config FILE]`.
/// A configuration file that cannot be read is unreadable input (66), not a bad
/// configuration (78).
fn readable(path: &Path) -> CmdResult {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| fail(EX_NOINPUT)(anyhow!("{}: {e}", path.display())))
}

/// Addresses given on the command line in place of the configuration's.
#[derive(Debug, Default)]
pub struct Overrides {
    /// The terminals' listener (the configuration must have exactly one).
    pub listen: Option<String>,
    /// The admin endpoint.
    pub admin: Option<String>,
}

impl Overrides {
    fn apply(&self, plan: &mut config::Plan) -> CmdResult {
        if let Some(addr) = &self.listen {
            let [(section, _, _)] = plan.listeners.as_mut_slice() else {
                return Err(fail(EX_USAGE)(anyhow!(
                    "--listen: the configuration has {} listeners; set their addresses in the file",
                    plan.listeners.len()
                )));
            };
            section.listen = addr.clone();
        }
        if let Some(addr) = &self.admin {
            plan.config.admin.listen = addr.clone();
        }
        Ok(())
    }
}

pub fn run(path: Option<PathBuf>, log_format: Option<String>, overrides: Overrides) -> CmdResult {
    if let Some(p) = &path {
        readable(p)?;
    }
    let mut plan = match config::load(path.as_deref()) {
        Ok(p) => p,
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            return Err(fail(EX_CONFIG)(anyhow!(
                "{}: {} problem(s); nothing started",
                config::origin(path.as_deref()),
                problems.len()
            )));
        }
    };
    overrides.apply(&mut plan)?;
    let json = log_format.as_deref().or(plan.config.log.format.as_deref()) == Some("json");
    init_logging(json, plan.config.log.level.as_deref());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("switchyard")
        .build()
        .map_err(|e| fail(EX_IOERR)(e.into()))?;
    runtime.block_on(serve(plan, path, overrides))
}

async fn serve(mut plan: config::Plan, path: Option<PathBuf>, overrides: Overrides) -> CmdResult {
    let keys = Arc::new(
        AuditKeys::load(&plan.chain_key, &plan.pan_key).map_err(|e| fail(EX_CONFIG)(e.into()))?,
    );
    if keys.is_demo() {
        eprintln!("switchyard: WARNING: {DEMO_WARNING}");
    }
    let telemetry = Telemetry::new().map_err(|e| fail(EX_IOERR)(e.into()))?;
    plan.audit.on_batch = Some(telemetry.batch_observer());
    let (audit, recovery) = AuditLog::open(plan.audit.clone(), keys.clone())
        .map_err(|e| fail(EX_IOERR)(anyhow!("audit log: {e}")))?;
    tracing::info!(dir = %plan.audit.dir.display(), next_seq = recovery.next_seq, torn_bytes = recovery.torn_bytes, "audit log open");
    let audit = Arc::new(audit);
    let (stream_stop, stream_stopped) = tokio::sync::watch::channel(false);
    let shipper = match &plan.config.cluster {
        None => None,
        Some(section) => {
            let config = section
                .config(&plan.audit.dir)
                .map_err(|e| fail(EX_CONFIG)(anyhow!(e)))?;
            let holder = switchyard_cluster::instances::Holder::this(&plan.audit.dir);
            let taken = tokio::time::timeout(
                Duration::from_secs(3),
                switchyard_cluster::instances::take(&config, holder),
            )
            .await;
            match taken {
                Ok(Ok(lease)) => {
                    tokio::spawn(lease.keep(stream_stop.subscribe()));
                }
                Ok(Err(e @ switchyard_cluster::ClusterError::Config(_))) => {
                    return Err(fail(EX_CONFIG)(e.into()));
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "instance id not checked: the broker is unreachable");
                }
                Err(_) => tracing::warn!("instance id not checked: the broker did not answer"),
            }
            let metrics = switchyard_cluster::ShipperMetrics::new(&telemetry.registry)
                .map_err(|e| fail(EX_IOERR)(e.into()))?;
            tracing::info!(instance = %config.instance, subject = %config.instance_subject(), "audit stream on");
            let shipper = switchyard_cluster::AuditShipper::new(config, audit.clone(), metrics)
                .map_err(|e| fail(EX_CONFIG)(e.into()))?;
            Some(tokio::spawn(shipper.run(stream_stopped)))
        }
    };

    // Simulated issuers first, so that their links can connect at once.
    let mut simulators = Vec::new();
    for (section, link) in &mut plan.links {
        if section.simulated {
            let mut sim = IssuerSimConfig::approving(link.spec);
            sim.framing = link.framing;
            let issuer = IssuerSim::start("127.0.0.1:0", sim)
                .await
                .map_err(|e| fail(EX_IOERR)(e.into()))?;
            link.endpoints = vec![Endpoint {
                addr: issuer.addr.to_string(),
                tls: None,
            }];
            tracing::info!(link = %section.name, addr = %issuer.addr, "simulated issuer started");
            simulators.push(issuer);
        }
    }
    let mut links = HashMap::new();
    let mut link_sources = Vec::new();
    let mut client_tls: Vec<Arc<ClientTls>> = Vec::new();
    for (section, link) in &plan.links {
        client_tls.extend(link.endpoints.iter().filter_map(|e| e.tls.clone()));
        let connections = link.connections;
        let started =
            Arc::new(IssuerLink::start(link.clone(), None).map_err(|e| fail(EX_CONFIG)(e.into()))?);
        link_sources.push((section.name.clone(), started.clone(), connections));
        links.insert(section.name.clone(), started);
    }
    let saf_stop = CancellationToken::new();
    let specs: switchyard_router::integrity::ListenerSpecs = plan
        .listeners
        .iter()
        .map(|(l, a, _)| (l.name.clone(), a.spec))
        .collect();
    let integrity = if plan.config.integrity.enabled {
        let mut journal_config = AuditConfig::new(&plan.saf_dir);
        journal_config.segment_bytes = 16 << 20;
        let (journal, _) = AuditLog::open(journal_config, keys.clone())
            .map_err(|e| fail(EX_IOERR)(anyhow!("store-and-forward journal: {e}")))?;
        let entries = switchyard_router::saf::replay(&plan.saf_dir)
            .map_err(|e| fail(EX_IOERR)(anyhow!("store-and-forward journal: {e}")))?;
        let saf = Arc::new(SafQueue::new(Arc::new(journal), entries, plan.saf.clone()));
        let window = Duration::from_secs(plan.config.integrity.duplicate_window_s.unwrap_or(600));
        let integrity = Arc::new(Integrity::new(saf, window));
        let remembered = integrity
            .rebuild_duplicates(&plan.audit.dir, &specs)
            .map_err(|e| fail(EX_IOERR)(anyhow!("duplicate window: {e}")))?;
        let recovered = switchyard_router::recover(&plan.audit.dir, &audit, &integrity.saf)
            .await
            .map_err(|e| fail(EX_IOERR)(anyhow!("crash recovery: {e}")))?;
        tracing::info!(
            backlog = integrity.saf.backlog(),
            dead_letters = integrity.saf.dead_letters(),
            recovered,
            remembered,
            "store-and-forward queue open"
        );
        Some(integrity)
    } else {
        None
    };
    let router = Router::new(
        plan.routes.clone(),
        links.clone(),
        audit.clone(),
        keys.clone(),
        plan.durable,
        &telemetry.registry,
    )
    .map_err(|e| fail(EX_CONFIG)(e.into()))?;
    let router = match &integrity {
        Some(i) => router.with_integrity(i.clone()),
        None => router,
    };
    let router = match (&plan.config.cluster, &integrity) {
        (Some(section), Some(i)) if section.shared_state => {
            let config = section
                .config(&plan.audit.dir)
                .map_err(|e| fail(EX_CONFIG)(anyhow!(e)))?;
            let state = switchyard_cluster::shared::JetStreamState::new(config, i.duplicate_window);
            let policy = match section.when_unreachable {
                config::WhenUnreachableSetting::Continue => {
                    switchyard_router::shared::WhenUnreachable::Continue
                }
                config::WhenUnreachableSetting::FailClosed => {
                    switchyard_router::shared::WhenUnreachable::FailClosed
                }
            };
            tracing::info!(policy = ?policy, "duplicate window and reversal index shared with the group");
            router.with_shared_state(switchyard_router::shared::SharedConfig::new(
                Arc::new(state),
                Duration::from_millis(section.shared_timeout_ms),
                policy,
            ))
        }
        _ => router,
    };
    let partial = plan
        .config
        .books
        .partial_amount()
        .map_err(|e| fail(EX_CONFIG)(anyhow!(e)))?;
    let router = router.with_partial_amount(partial);
    let mut views = switchyard_cluster::follower::Views::default();
    let router = if plan.config.batch.enabled {
        let book = switchyard_router::batch::BatchBook::rebuild(
            &plan.audit.dir,
            plan.config.batch.policy(),
        )
        .map_err(|e| fail(EX_IOERR)(anyhow!("terminal batches: {e}")))?;
        let book = Arc::new(book);
        views.book = Some(book.clone());
        router.with_batches(book)
    } else {
        router
    };
    if let Some(section) = &plan.config.cluster {
        if let (true, Some(integrity)) = (section.shared_state, &integrity) {
            views.integrity = Some((integrity.clone(), specs, router.metrics().clone()));
        }
        if views.book.is_some() || views.integrity.is_some() {
            // The other instances' records, from the audit stream, into this one's views.
            let config = section
                .config(&plan.audit.dir)
                .map_err(|e| fail(EX_CONFIG)(anyhow!(e)))?;
            tokio::spawn(switchyard_cluster::follower::follow(
                config,
                views,
                stream_stop.subscribe(),
            ));
        }
    }
    let router = match &plan.config.business_day {
        None => router,
        Some(b) => {
            let schedule =
                switchyard_router::business_day::CutoverSchedule::parse(&b.cutover, &b.time_zone)
                    .map_err(|e| fail(EX_CONFIG)(anyhow!("business_day: {e}")))?;
            let day = Arc::new(switchyard_router::business_day::BusinessDay::new(schedule));
            let last = switchyard_router::business_day::last_cut_over(&plan.audit.dir)
                .map_err(|e| fail(EX_IOERR)(anyhow!("business day: {e}")))?;
            if let Some((at, opened)) = last {
                day.restore(at, opened);
            }
            tokio::spawn(switchyard_router::business_day::announce(
                day.clone(),
                audit.clone(),
                saf_stop.clone(),
            ));
            tracing::info!(business_date = %day.date_at(switchyard_router::now_us()), "business day");
            let dated = plan
                .links
                .iter()
                .filter(|(l, _)| l.settlement_date)
                .map(|(l, _)| l.name.clone());
            router
                .with_business_day(day)
                .with_settlement_date(dated.collect::<Vec<_>>())
        }
    };
    let router = Arc::new(match &plan.config.security {
        None => router,
        Some(sec) => {
            let sections: Vec<_> = plan.links.iter().map(|(s, _)| s.clone()).collect();
            let security = crate::card_security::build(
                sec,
                &sections,
                plan.registry.as_ref(),
                &telemetry.registry,
            )
            .await
            .map_err(fail(EX_CONFIG))?;
            let security = Arc::new(security);
            for (name, keys) in &security.links {
                if let (Some(exchange), Some(link)) = (&keys.key_exchange, links.get(name)) {
                    let handler = switchyard_router::key_exchange::KeyExchange::new(
                        security.clone(),
                        audit.clone(),
                    );
                    link.set_issuer_requests(Arc::new(handler));
                    if exchange.interval.is_some() {
                        tokio::spawn(switchyard_router::key_exchange::schedule(
                            security.clone(),
                            audit.clone(),
                            name.clone(),
                            link.clone(),
                            saf_stop.clone(),
                        ));
                    }
                }
            }
            router.with_security(security)
        }
    });
    router.replace_registry(plan.registry.take());
    if let Some(i) = &integrity {
        for (section, _) in &plan.links {
            let advice = section.reversal_mti.as_deref() == Some("0420");
            if let Some(started) = links.get(&section.name) {
                tokio::spawn(i.saf.clone().deliver(
                    section.name.clone(),
                    started.clone(),
                    advice,
                    router.security().cloned(),
                    saf_stop.clone(),
                ));
            }
        }
    }

    // Bind everything before serving anything: a port in use stops the start cleanly.
    let mut bound = Vec::new();
    for (section, acceptor_config, tls) in &plan.listeners {
        let listener = bind_terminals(&section.listen)
            .with_context(|| format!("listener {:?}: binding {}", section.name, section.listen))
            .map_err(fail(EX_IOERR))?;
        bound.push((
            section.clone(),
            acceptor_config.clone(),
            tls.clone(),
            listener,
        ));
    }
    let admin_listener = TcpListener::bind(&plan.config.admin.listen)
        .await
        .with_context(|| format!("admin: binding {}", plan.config.admin.listen))
        .map_err(fail(EX_IOERR))?;

    let accepting = CancellationToken::new();
    let mut served = Vec::new();
    let mut listener_sources = Vec::new();
    let mut server_tls: Vec<Arc<ServerTls>> = Vec::new();
    let mut certificates = Vec::new();
    for (section, acceptor_config, tls, listener) in bound {
        router.metrics().listener(&section.name);
        let handler = Arc::new(TerminalHandler {
            router: router.clone(),
            listener: section.name.clone().into(),
            spec: acceptor_config.spec,
        });
        server_tls.extend(tls.clone());
        certificates.extend(tls.clone().map(|t| (section.name.clone(), t)));
        let acceptor = Arc::new(Acceptor::new(acceptor_config, handler, tls));
        listener_sources.push((section.name.clone(), acceptor.stats().clone()));
        tracing::info!(listener = %section.name, addr = %section.listen, spec = %section.spec, "accepting terminals");
        served.push(tokio::spawn(acceptor.serve(listener, accepting.clone())));
    }
    let switch = Arc::new(Switch {
        telemetry,
        sources: Sources {
            listeners: listener_sources,
            links: link_sources,
            audit: audit.clone(),
            saf: integrity.as_ref().map(|i| i.saf.clone()),
            certificates,
        },
        router: router.clone(),
        draining: AtomicBool::new(false),
        listeners_bound: AtomicBool::new(true),
    });
    let admin_stop = CancellationToken::new();
    let auth = crate::admin_auth::AdminAuth::load(
        plan.config.admin.tokens_file.as_deref(),
        plan.config.admin.metrics_open,
        &switch.telemetry.registry,
    )
    .map_err(fail(EX_CONFIG))?;
    tokio::spawn(admin::serve(
        admin_listener,
        switch.clone(),
        Arc::new(auth),
        admin_stop.clone(),
    ));
    tracing::info!(admin = %plan.config.admin.listen, config = %config::origin(path.as_deref()), "switchyard running");
    notify::notify("READY=1");

    let mut term = signal(SignalKind::terminate()).map_err(|e| fail(EX_IOERR)(e.into()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| fail(EX_IOERR)(e.into()))?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| fail(EX_IOERR)(e.into()))?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                notify::reloading();
                reload(path.as_deref(), &overrides, &plan, &router, &server_tls, &client_tls, &switch);
                notify::notify("READY=1");
            }
        }
    }

    // Drain.
    notify::notify("STOPPING=1");
    tracing::info!("draining: not ready, no new connections, finishing requests in flight");
    switch.draining.store(true, Ordering::Release);
    accepting.cancel();
    let grace = Duration::from_millis(plan.config.shutdown.grace_ms);
    let drained = tokio::time::timeout(grace, async {
        for s in served {
            let _ = s.await;
        }
    })
    .await
    .is_ok();
    if !drained {
        tracing::warn!(
            grace_ms = plan.config.shutdown.grace_ms,
            "grace period over with requests still in flight"
        );
    }
    saf_stop.cancel();
    for link in links.values() {
        let _ = tokio::time::timeout(Duration::from_secs(2), link.shutdown()).await;
    }
    admin_stop.cancel();
    let flushed = audit.flush().await;
    // The audit stream records what it has shipped; the rest goes at the next start.
    let _ = stream_stop.send(true);
    if let Some(shipper) = shipper {
        let _ = tokio::time::timeout(Duration::from_secs(2), shipper).await;
    }
    let closed = audit.close();
    drop(simulators);
    match (flushed, closed) {
        (Ok(last), Ok(())) => {
            tracing::info!(last_seq = last, "audit log flushed; stopped");
            Ok(())
        }
        (Err(e), _) | (_, Err(e)) => Err(fail(EX_IOERR)(anyhow!("audit log at shutdown: {e}"))),
    }
}

/// SIGHUP: read the file again; on success swap the route table and reload certificates;
/// on any error keep everything as it is and say why.
fn reload(
    path: Option<&Path>,
    overrides: &Overrides,
    running: &config::Plan,
    router: &Router<IssuerLink>,
    server_tls: &[Arc<ServerTls>],
    client_tls: &[Arc<ClientTls>],
    switch: &Switch,
) {
    let Some(path) = path else {
        tracing::warn!("SIGHUP: running the embedded default configuration; nothing to reload");
        return;
    };
    let result = (|| -> Result<Vec<String>, Vec<String>> {
        let mut plan = config::load(Some(path))?;
        overrides
            .apply(&mut plan)
            .map_err(|f| vec![format!("{:#}", f.error)])?;
        let mut not_applied = Vec::new();
        let shape = |p: &config::Plan| {
            (
                p.listeners
                    .iter()
                    .map(|(l, _, _)| (l.name.clone(), l.listen.clone(), l.spec.clone()))
                    .collect::<Vec<_>>(),
                p.links
                    .iter()
                    .map(|(l, _)| (l.name.clone(), l.endpoints.clone(), l.spec.clone()))
                    .collect::<Vec<_>>(),
            )
        };
        if shape(&plan) != shape(running) {
            not_applied.push("listeners or links changed: restart to apply those".to_string());
        }
        router
            .replace_routes(plan.routes)
            .map_err(|e| vec![e.to_string()])?;
        router.replace_registry(plan.registry);
        if let Some(security) = router.security() {
            match security.module.reload_keys() {
                Ok(Some(n)) => tracing::info!(keys = n, "SIGHUP: key store reloaded"),
                Ok(None) => {}
                Err(e) => return Err(vec![format!("key store: {e}")]),
            }
        }
        for tls in server_tls {
            tls.reload()
                .map_err(|e| vec![format!("listener certificate: {e}")])?;
        }
        for tls in client_tls {
            tls.reload()
                .map_err(|e| vec![format!("link certificate: {e}")])?;
        }
        Ok(not_applied)
    })();
    match result {
        Ok(not_applied) => {
            // A change that waits for a restart is its own result, for the alert to see.
            let result = if not_applied.is_empty() {
                "ok"
            } else {
                "restart_required"
            };
            switch.telemetry.reloads.with_label_values(&[result]).inc();
            tracing::info!(config = %path.display(), "SIGHUP: routes and certificates reloaded");
            for n in not_applied {
                tracing::warn!("SIGHUP: {n}");
            }
        }
        Err(problems) => {
            switch.telemetry.reloads.with_label_values(&["error"]).inc();
            for p in problems {
                tracing::error!(config = %path.display(), problem = %p, "SIGHUP: reload refused; the running configuration stays");
            }
        }
    }
}
