//! `device.info`.

use letstalk_ipc::RpcError;
use letstalk_ipc::types::{DeviceInfo, Empty, NetworkType};

use crate::Daemon;

/// The device as it is now. The network and chassis may come from the system D-Bus (at
/// most a second's wait, see `device::hardware_and_network`); the rest is local.
pub(crate) async fn info(daemon: &Daemon, _: Empty) -> Result<DeviceInfo, RpcError> {
    let (hardware, network) = crate::device::hardware_and_network(daemon.network()).await;
    let frontends = daemon
        .frontends
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .values()
        .cloned()
        .collect();
    Ok(DeviceInfo {
        hardware,
        os: crate::device::os(),
        online: network.kind != NetworkType::None,
        network,
        device_id: daemon.device_id(),
        frontends,
    })
}
