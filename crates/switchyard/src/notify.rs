//! The systemd readiness protocol (sd_notify): `READY=1` once everything is bound,
//! `RELOADING=1` around a SIGHUP reload, `STOPPING=1` when draining. A datagram to the
//! socket in `NOTIFY_SOCKET`, when systemd set one; nothing otherwise.

use std::os::unix::net::UnixDatagram;

/// Send `state` (e.g. `READY=1`) to systemd, if it listens. Failures are logged, never fatal.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        match bytes.strip_prefix(b"@") {
            // An abstract socket name.
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
            None => socket.send_to(state.as_bytes(), &path),
        }
    });
    if let Err(error) = sent {
        tracing::warn!(%error, state, "could not notify systemd");
    }
}

/// `MONOTONIC_USEC=...` for a reload notification (CLOCK_MONOTONIC in microseconds).
pub fn reloading() {
    // std exposes no CLOCK_MONOTONIC reading; /proc/uptime is the same clock family, which
    // systemd only uses to order the reload against the unit's own timestamps.
    let usec = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| {
            t.split_whitespace()
                .next()
                .and_then(|s| s.parse::<f64>().ok())
        })
        .map_or(0, |s| (s * 1e6) as u64);
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}
