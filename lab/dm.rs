//! A device-mapper target message (`dmsetup message NAME 0 TEXT`) sent with
//! the ioctl itself: under software emulation a `dmsetup` process per
//! acknowledgement would cost more than the workload. The structures are
//! those of include/uapi/linux/dm-ioctl.h.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;
/// `DM_TARGET_MSG_CMD` in `enum { DM_VERSION_CMD = 0, ... }`.
const DM_TARGET_MSG_CMD: u64 = 14;
const DM_IOCTL: u64 = 0xfd;

/// `struct dm_ioctl`.
#[repr(C)]
struct DmIoctl {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; DM_NAME_LEN],
    uuid: [u8; DM_UUID_LEN],
    data: [u8; 7],
}

/// `_IOWR(DM_IOCTL, DM_TARGET_MSG_CMD, struct dm_ioctl)`.
const fn target_msg_request() -> u64 {
    let size = std::mem::size_of::<DmIoctl>() as u64;
    (3 << 30) | (size << 16) | (DM_IOCTL << 8) | DM_TARGET_MSG_CMD
}

/// An open `/dev/mapper/control`, for messages to one device.
pub struct Messenger {
    control: File,
    name: String,
}

impl Messenger {
    pub fn new(device_name: &str) -> io::Result<Messenger> {
        let control = File::options().read(true).write(true).open("/dev/mapper/control")?;
        if device_name.len() >= DM_NAME_LEN {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "device-mapper name too long"));
        }
        Ok(Messenger { control, name: device_name.to_string() })
    }

    /// Sends `text` to the device's target at sector 0.
    pub fn send(&self, text: &str) -> io::Result<()> {
        let head = std::mem::size_of::<DmIoctl>();
        // struct dm_target_msg { __u64 sector; char message[]; }, NUL-terminated.
        let total = (head + 8 + text.len() + 1).next_multiple_of(8);
        let mut buf = vec![0u64; total / 8];
        let bytes: &mut [u8] =
            // SAFETY: a u64 buffer viewed as bytes, same length, u8 has no alignment needs.
            unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), total) };
        let mut io = DmIoctl {
            version: [4, 0, 0],
            data_size: total as u32,
            data_start: head as u32,
            target_count: 0,
            open_count: 0,
            flags: 0,
            event_nr: 0,
            padding: 0,
            dev: 0,
            name: [0; DM_NAME_LEN],
            uuid: [0; DM_UUID_LEN],
            data: [0; 7],
        };
        io.name[..self.name.len()].copy_from_slice(self.name.as_bytes());
        // SAFETY: DmIoctl is plain old data; its bytes are copied into the
        // buffer, which is at least that long.
        let raw = unsafe { std::slice::from_raw_parts((&raw const io).cast::<u8>(), head) };
        bytes[..head].copy_from_slice(raw);
        bytes[head..head + 8].copy_from_slice(&0u64.to_ne_bytes());
        bytes[head + 8..head + 8 + text.len()].copy_from_slice(text.as_bytes());
        // SAFETY: the buffer holds a dm_ioctl followed by a dm_target_msg,
        // data_size bytes long, as the ioctl expects; it lives across the call.
        let r = unsafe {
            libc::ioctl(self.control.as_raw_fd(), target_msg_request() as libc::c_ulong, buf.as_mut_ptr())
        };
        if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }
}
