//! Write coalescing: the sectors of several write requests are gathered
//! into the pages of one open program command, so a 512-byte write no
//! longer programs a 4 KiB page of its own and a burst of small writes
//! costs one card command instead of one each.
//!
//! The open command has no place on flash yet. It is placed (an extent of
//! an append point is taken) and handed to the card when it is full, when
//! another request needs the append points, and on every
//! [`VslChannel::poll`] — the deadline: a write waits at most until the
//! next poll before it is on its way, so queue-depth-1 latency is not
//! traded for packing. Each request is acknowledged only when every
//! command holding one of its sectors has been programmed (the durability
//! contract), and each sector keeps its own version in the page's OOB
//! record (`seq + seq_delta`), so recovery orders copies exactly as if
//! every write had had pages of its own.

use super::*;

/// Pages one coalesced command gathers before it is sent: small enough
/// that a burst is spread over several dies, large enough that the card
/// command's cost is shared by many sectors.
pub(super) const OPEN_CMD_PAGES: usize = 64;

impl VslChannel {
    /// Card commands and queue slots a write of `count` sectors needs on
    /// top of the open command, and the pages then waiting to be placed.
    pub(super) fn write_needs(&self, count: u64) -> (usize, usize, u64) {
        let spp = self.spp as u64;
        let sealed = self.open.map_or(0, |c| self.cmds[c].n as u64);
        let pages = sealed + (self.open_fill as u64 + count).div_ceil(spp);
        let cmds = pages.div_ceil(OPEN_CMD_PAGES as u64) as usize;
        (cmds - usize::from(self.open.is_some()), cmds, pages)
    }

    /// The open command, started on a free command slot if there is none.
    /// Callers checked that a slot is free.
    fn open_cmd(&mut self) -> usize {
        if let Some(c) = self.open {
            return c;
        }
        let c = self.cmd_free.pop().unwrap_or(0) as usize;
        let cmd = &mut self.cmds[c];
        cmd.kind = CmdKind::Write;
        cmd.req = NO_REQ;
        cmd.n = 0;
        cmd.off = 0;
        cmd.cnt = 0;
        cmd.seq = 0;
        cmd.stalled = false;
        cmd.scattered = true;
        cmd.members.clear();
        self.open = Some(c);
        c
    }

    /// Makes request `r` (version `seq`) a member of command `c`.
    fn join(&mut self, c: usize, r: u16, seq: u64) {
        let cmd = &mut self.cmds[c];
        if cmd.members.last() != Some(&r) {
            cmd.members.push(r);
            self.reqs[r as usize].pending += 1;
        }
        cmd.seq = cmd.seq.max(seq);
    }

    /// Appends the `count` sectors of write request `r` (LBAs from `lba`,
    /// data in `data`, version `seq`) to the open command, sending each
    /// command that fills up. Callers checked room with
    /// [`Self::write_needs`].
    pub(super) fn append_write(&mut self, r: u16, lba: u64, data: &[IoVec], count: u64, seq: u64) {
        let spp = self.spp as u64;
        let mut s = 0u64;
        while s < count {
            let c = self.open_cmd();
            self.join(c, r, seq);
            if self.open_fill == 0 && count - s >= spp {
                let i = self.cmds[c].n as usize;
                let rec = OobRecord::new(PageKind::Data, seq);
                self.fill_page(c, i, data, s, spp as u32, &|k| lba + k, rec);
                self.cmds[c].n += 1;
                s += spp;
            } else {
                self.append_sector(c, data, s, lba + s, seq);
                s += 1;
            }
            if self.cmds[c].n as usize == OPEN_CMD_PAGES {
                self.submit_open();
            }
        }
    }

    /// Copies sector `s` of `data` (LBA `lba`, version `seq`) into the
    /// partly filled page of command `c`, sealing the page when full.
    fn append_sector(&mut self, c: usize, data: &[IoVec], s: u64, lba: u64, seq: u64) {
        let ss = self.sector_size;
        let i = self.cmds[c].n as usize;
        if self.open_fill == 0 {
            let st = self.staging_free.pop().unwrap_or(0);
            self.cmds[c].staging[i] = st;
            self.cmds[c].data[i] = self.stage_iova(st);
            self.open_rec = OobRecord::new(PageKind::Data, seq);
        }
        let slot = self.open_fill as usize;
        let dst = self.stage_ptr(self.cmds[c].staging[i]);
        let (vi, off) = Self::locate(data, s as usize * ss);
        // SAFETY: the staging page is ours (taken for this page above) and
        // `slot < spp`, so the sector lies inside it; the caller of
        // IoVec::new promised `ss` readable bytes at the sector; the two
        // are distinct allocations.
        unsafe { std::ptr::copy_nonoverlapping(data[vi].ptr().add(off), dst.add(slot * ss), ss) };
        self.open_rec.lbas[slot] = lba as u32;
        // Versions only grow on this channel, and a page is sealed within
        // one poll, so the offset is small.
        self.open_rec.seq_delta[slot] = (seq - self.open_rec.seq) as u32;
        self.open_fill += 1;
        if self.open_fill == self.spp {
            self.seal_partial(c);
        }
    }

    /// Closes the partly filled page of command `c`: the unused slots hold
    /// zeros and no LBA; the page's OOB record is written.
    fn seal_partial(&mut self, c: usize) {
        if self.open_fill == 0 {
            return;
        }
        let ss = self.sector_size;
        let fill = self.open_fill as usize;
        let i = self.cmds[c].n as usize;
        let dst = self.stage_ptr(self.cmds[c].staging[i]);
        // SAFETY: slots `fill..spp` of our staging page.
        unsafe { std::ptr::write_bytes(dst.add(fill * ss), 0, (self.spp as usize - fill) * ss) };
        let mut rec = self.open_rec;
        rec.count = fill as u16;
        rec.slots = self.spp as u8;
        // SAFETY: the staging page is host-owned until submission.
        let page = unsafe { std::slice::from_raw_parts(dst, self.page_size) };
        self.store_oob(c, i, &rec, rec.data_crc(page));
        self.cmds[c].n += 1;
        self.open_fill = 0;
    }

    /// Places the unplaced pages `[off, n)` of coalesced command `c` one
    /// page per append point in turn, so consecutive pages land on
    /// different dies and program in parallel. Returns the pages placed
    /// (`cnt`); 0 when the append points have no room.
    pub(super) fn place_scattered(&mut self, c: usize) -> u32 {
        let (off, n) = (self.cmds[c].off, self.cmds[c].n);
        let floor = self.floor();
        if self.ring.ensure_room(&self.vsl.blocks, (n - off) as u64, floor).is_err() {
            // Whatever the open blocks still hold is used; the rest waits.
            let _ = self.ring.ensure_room(&self.vsl.blocks, 1, 0);
        }
        let mut placed = 0;
        while off + placed < n {
            let Some(ext) = self.ring.take(1) else { break };
            self.cmds[c].ppn[(off + placed) as usize] = self.layout.first_page(ext.block) + ext.first;
            placed += 1;
        }
        self.cmds[c].cnt = placed;
        placed
    }

    /// Records in the block table the pages `[from, to)` of scattered
    /// command `c` programmed, one call per run of pages in one block.
    pub(super) fn note_scattered_programmed(&mut self, c: usize, from: u32, to: u32, seq: u64) {
        let mut i = from;
        while i < to {
            let block = self.layout.block_of_page(self.cmds[c].ppn[i as usize]);
            let mut j = i + 1;
            while j < to && self.layout.block_of_page(self.cmds[c].ppn[j as usize]) == block {
                j += 1;
            }
            self.vsl.note_programmed(block, j - i, seq);
            i = j;
        }
    }

    /// Places the open command on the append points and queues it for the
    /// card. Returns false (the command stays open) when the submission
    /// queue has no free slot.
    pub(super) fn submit_open(&mut self) -> bool {
        let Some(c) = self.open else {
            return true;
        };
        if self.q.free_slots() == 0 {
            return false;
        }
        self.seal_partial(c);
        self.open = None;
        self.cmds[c].off = 0;
        if self.place_scattered(c) == 0 {
            // No room now (the groomer is behind): the stalled-command path
            // places it once space is free, or fails it when the card
            // turned read-only.
            self.park(c, true);
        } else if self.submit_program(c).is_err() {
            self.park(c, false);
        }
        true
    }
}
