//! Exit statuses (documented in `leasehold --help`).

use lease::LeaseError;

pub const FAILURE: i32 = 1;
pub const BUSY: i32 = 3;
pub const UNUSABLE_SECTOR: i32 = 4;
pub const LOST: i32 = 5;

/// The exit status for an error: the first lease error in its chain decides.
pub fn code_for(error: &anyhow::Error) -> i32 {
    if let Some(refused) = error
        .chain()
        .find_map(|e| e.downcast_ref::<crate::control::DaemonRefused>())
    {
        return refused.exit_code();
    }
    let Some(lease_error) = error.chain().find_map(|e| e.downcast_ref::<LeaseError>()) else {
        return FAILURE;
    };
    match lease_error {
        LeaseError::HeldByOther { .. }
        | LeaseError::HostIdInUse { .. }
        | LeaseError::HostIdNotFree { .. }
        | LeaseError::Contention { .. } => BUSY,
        LeaseError::Corrupt { .. } | LeaseError::ClaimBlocked { .. } => UNUSABLE_SECTOR,
        LeaseError::DeltaLost { .. }
        | LeaseError::Fenced { .. }
        | LeaseError::RenewalExpired { .. }
        | LeaseError::NotOwner { .. }
        | LeaseError::JoinRace { .. } => LOST,
        _ => FAILURE,
    }
}
