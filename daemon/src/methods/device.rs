//! `device.info`.

use letstalk_ipc::RpcError;
use letstalk_ipc::types::{DeviceInfo, Empty, NetworkType};

use crate::Daemon;

pub(crate) fn info(daemon: &Daemon, _: Empty) -> Result<DeviceInfo, RpcError> {
    let network = daemon.network();
    let frontends = daemon
        .frontends
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .values()
        .cloned()
        .collect();
    Ok(DeviceInfo {
        hardware: crate::device::hardware(),
        os: crate::device::os(),
        online: network.kind != NetworkType::None,
        network,
        device_id: daemon.device_id.clone(),
        frontends,
    })
}
