// SPDX-License-Identifier: Apache-2.0
//! The stop step (`--at-shutdown`): run by `kmod-day1-pull-shutdown.service`'s `ExecStop=`,
//! which systemd runs while the network is still up. It works only when the system is
//! really going down (a staged OS update's reboot), not when the unit is merely stopped or
//! restarted by hand: systemd's `SystemState` is then `stopping`.

use anyhow::Context as _;

/// Whether the stop step has work: the system is going down. Says why not otherwise.
pub(crate) async fn shutting_down() -> bool {
    match system_is_stopping().await {
        Ok(true) => {
            tracing::info!("the system is shutting down: fetching what the next boot needs");
            true
        }
        Ok(false) => {
            tracing::info!("the unit was stopped, the system is not shutting down: nothing to do");
            false
        }
        Err(e) => {
            tracing::warn!(
                "cannot tell whether the system is shutting down ({e:#}): nothing to do"
            );
            false
        }
    }
}

/// Whether systemd is shutting the system down.
async fn system_is_stopping() -> anyhow::Result<bool> {
    let conn = zbus::Connection::system()
        .await
        .context("connecting to the system D-Bus")?;
    let reply = conn
        .call_method(
            Some("org.freedesktop.systemd1"),
            "/org/freedesktop/systemd1",
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &("org.freedesktop.systemd1.Manager", "SystemState"),
        )
        .await
        .context("asking systemd for its SystemState")?;
    let value: zbus::OwnedVariant = reply
        .body()
        .deserialize()
        .context("reading systemd's SystemState")?;
    let state = String::try_from(value).context("reading systemd's SystemState")?;
    Ok(state == "stopping")
}
