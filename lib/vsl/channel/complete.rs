//! Completion handling: map updates for programmed pages, re-placement
//! after program failures, trim installation, flush ordering, and the
//! callbacks that finish requests.

use super::*;

impl VslChannel {
    pub(super) fn on_completion(&mut self, comp: Completion, f: &mut dyn FnMut(u64, Result<(), IoError>)) -> usize {
        let c = comp.tag as usize;
        if c >= self.cmds.len() {
            return 0;
        }
        if comp.status == CardStatus::PowerCut {
            self.vsl.mark_power_lost();
        }
        match self.cmds[c].kind {
            CmdKind::Read => self.on_read(c, comp, f),
            CmdKind::Flush => {
                let r = self.cmds[c].req;
                if !comp.status.is_ok() {
                    let e = if comp.status == CardStatus::PowerCut {
                        IoError::PowerLost
                    } else {
                        IoError::Media {
                            lba: 0,
                            status: comp.status,
                        }
                    };
                    self.reqs[r as usize].error.get_or_insert(e);
                }
                self.release_cmd(c);
                self.cmd_done(r, f)
            }
            _ => self.on_program(c, comp, f),
        }
    }
    /// Installs program pages `[from, to)` of command `c` (already on flash).
    pub(super) fn install_pages(&mut self, c: usize, from: u32, to: u32, block: u32, first: u32) {
        let cmd_kind = self.cmds[c].kind;
        let scattered = self.cmds[c].scattered;
        let base = self.layout.first_page(block) + first;
        let mut raw = [0u8; OOB_RECORD_LEN];
        for i in from..to {
            let page = if scattered { self.cmds[c].ppn[i as usize] } else { base + (i - from) };
            if cmd_kind == CmdKind::Write || cmd_kind == CmdKind::Atomic {
                // SAFETY: our OOB slot; the card finished reading it.
                unsafe { std::ptr::copy_nonoverlapping(self.oob_ptr(c, i as usize), raw.as_mut_ptr(), OOB_RECORD_LEN) };
                if let Some(d) = OobRecord::decode(&raw) {
                    for (slot, &l) in d.record.lbas.iter().enumerate().take(d.record.count as usize) {
                        if l != NO_LBA {
                            self.vsl.install_data(l as u64, self.layout.phys(page, slot as u32));
                        }
                    }
                }
            }
        }
        if to > from {
            match cmd_kind {
                CmdKind::Write | CmdKind::Atomic => {
                    self.tally.user_pages += (to - from) as u64;
                }
                CmdKind::Pad => {
                    self.tally.pad_pages += (to - from) as u64;
                }
                _ => {}
            }
        }
    }
    pub(super) fn on_program(&mut self, c: usize, comp: Completion, f: &mut dyn FnMut(u64, Result<(), IoError>)) -> usize {
        let (kind, r, off, cnt, block, first, seq, n) = {
            let cmd = &self.cmds[c];
            (cmd.kind, cmd.req, cmd.off, cmd.cnt, cmd.block, cmd.first, cmd.seq, cmd.n)
        };
        let ok_pages = if comp.status.is_ok() {
            cnt
        } else if comp.failed_mask == 0 {
            0
        } else {
            comp.failed_mask.trailing_zeros().min(cnt)
        };
        // Pages that made it: install (atomic groups wait for all members).
        if kind == CmdKind::Note {
            if ok_pages == 1 {
                let page = self.layout.first_page(block) + first;
                let note = self.layout.phys(page, 0);
                self.vsl.trim_pages.set(page, true);
                // Pin the note so the groomer keeps it until installed.
                self.vsl.blocks.get(block).note_refs.fetch_add(1, Ordering::AcqRel);
                self.vsl.note_programmed(block, 1, seq);
                self.tally.note_pages += 1;
                self.reqs[r as usize].note = note;
            }
        } else if kind == CmdKind::Atomic {
            if ok_pages == cnt {
                self.install_pages(c, off, off + cnt, block, first);
                self.vsl.note_programmed(block, cnt, seq);
            } else if ok_pages > 0 {
                // Members that landed in the failed block are orphans there.
                self.vsl.note_programmed(block, ok_pages, seq);
            }
        } else if self.cmds[c].scattered {
            self.install_pages(c, off, off + ok_pages, block, first);
            self.note_scattered_programmed(c, off, off + ok_pages, seq);
        } else {
            self.install_pages(c, off, off + ok_pages, block, first);
            if ok_pages > 0 {
                self.vsl.note_programmed(block, ok_pages, seq);
            }
        }
        if ok_pages == cnt {
            let next = off + cnt;
            if next < n && kind != CmdKind::Atomic {
                self.cmds[c].off = next;
                self.cmds[c].cnt = 0;
                return self.continue_program(c, f);
            }
            return self.finish_program(c, f);
        }
        // Failure.
        match comp.status {
            CardStatus::PowerCut => {
                self.cmd_error(c, |_| IoError::PowerLost);
                self.release_and_done(c, f)
            }
            CardStatus::ProgramFailed
            | CardStatus::BadBlock
            | CardStatus::DieFailed
            | CardStatus::ProgramOrder
            | CardStatus::NotErased => {
                if comp.status == CardStatus::ProgramFailed {
                    self.vsl.ctr.program_failures.fetch_add(1, Ordering::Relaxed);
                }
                let block = if self.cmds[c].scattered {
                    self.layout.block_of_page(self.cmds[c].ppn[(off + ok_pages) as usize])
                } else {
                    block
                };
                self.ring.drop_block(block);
                self.vsl.retire_block(block);
                if kind == CmdKind::Pad {
                    // Padding only closed the block; it is retired anyway.
                    self.release_cmd(c);
                    return self.cmd_done(r, f);
                }
                if kind == CmdKind::Atomic {
                    self.cmds[c].off = 0;
                } else {
                    self.cmds[c].off = off + ok_pages;
                }
                self.cmds[c].cnt = 0;
                self.continue_program(c, f)
            }
            status => {
                self.cmd_error(c, |req| IoError::Media { lba: req.lba, status });
                self.release_and_done(c, f)
            }
        }
    }
    /// Places the unplaced pages `[off, n)` of program command `c` in new
    /// blocks (after a failure or a split). Parks the command when no space
    /// is free; it is retried on later polls.
    pub(super) fn continue_program(&mut self, c: usize, f: &mut dyn FnMut(u64, Result<(), IoError>)) -> usize {
        let (kind, off, n) = (self.cmds[c].kind, self.cmds[c].off, self.cmds[c].n);
        let left = n - off;
        // Take an extent only when it can be submitted at once: pages of a
        // block must reach the card in order.
        let pad_cmds = if kind == CmdKind::Atomic {
            (self.layout.pages_per_block() as usize).div_ceil(CMD_PAGES)
        } else {
            0
        };
        if self.q.free_slots() <= pad_cmds || self.cmd_free.len() < pad_cmds {
            self.cmds[c].cnt = 0;
            self.cmds[c].stalled = true;
            let _ = self.stalled.push(c as u16);
            return 0;
        }
        let ext = if self.cmds[c].scattered {
            // Coalesced writes: one page per append point (no extent).
            (self.place_scattered(c) > 0).then_some(None)
        } else if kind == CmdKind::Atomic {
            match self.ring.take_contiguous(&self.vsl.blocks, left, 0) {
                Ok((pad, e)) => {
                    if let Some(p) = pad {
                        let r = self.cmds[c].req;
                        self.submit_pad(r, p.block, p.first, p.count);
                    }
                    Some(Some(e))
                }
                Err(_) => None,
            }
        } else if self.ring.ensure_room(&self.vsl.blocks, 1, 0).is_ok() {
            self.ring.take(left).map(Some)
        } else {
            None
        };
        let Some(ext) = ext else {
            if self.vsl.is_read_only() || self.vsl.is_offline() {
                let e = if self.vsl.is_offline() { IoError::PowerLost } else { IoError::ReadOnly };
                self.cmd_error(c, |_| e);
                return self.release_and_done(c, f);
            }
            self.park(c, true);
            return 0;
        };
        self.cmds[c].stalled = false;
        if let Some(ext) = ext {
            let cmd = &mut self.cmds[c];
            cmd.block = ext.block;
            cmd.first = ext.first;
            cmd.cnt = ext.count;
        }
        if self.submit_program(c).is_err() {
            self.park(c, false);
        }
        0
    }
    /// Parks program command `c` until a later poll can place (`no_room`:
    /// the groomer is asked for space) or send it.
    pub(super) fn park(&mut self, c: usize, no_room: bool) {
        self.cmds[c].stalled = true;
        let _ = self.stalled.push(c as u16);
        if no_room {
            self.vsl.gc_active.store(true, Ordering::Release);
        }
    }
    pub(super) fn retry_stalled(&mut self, f: &mut dyn FnMut(u64, Result<(), IoError>)) -> usize {
        let mut done = 0;
        for _ in 0..self.stalled.len() {
            let Some(c) = self.stalled.pop() else { break };
            let c = c as usize;
            if self.cmds[c].stalled {
                if self.cmds[c].cnt > 0 && self.q.free_slots() > 0 {
                    // Extent already taken, queue was full: resubmit.
                    if self.submit_program(c).is_ok() {
                        self.cmds[c].stalled = false;
                    } else {
                        let _ = self.stalled.push(c as u16);
                    }
                } else {
                    done += self.continue_program(c, f);
                }
            }
        }
        done
    }
    pub(super) fn finish_program(&mut self, c: usize, f: &mut dyn FnMut(u64, Result<(), IoError>)) -> usize {
        let r = self.cmds[c].req;
        let kind = self.cmds[c].kind;
        if r == NO_REQ {
            return self.release_and_done(c, f);
        }
        self.release_cmd(c);
        if kind == CmdKind::Note {
            if !self.vsl.plp && self.cmd_free.last().is_some() && self.q.free_slots() > 0 {
                // Make the note durable before any LBA points at it.
                let fc = self.cmd_free.pop().unwrap_or(0) as usize;
                self.cmds[fc].kind = CmdKind::Flush;
                self.cmds[fc].req = r;
                self.cmds[fc].n = 0;
                if self.q.flush(fc as u64).is_ok() {
                    self.reqs[r as usize].queued_flush = true;
                    return 0;
                }
                self.cmd_free.push(fc as u16);
            }
            if !self.vsl.plp && !self.reqs[r as usize].queued_flush {
                // No slot for the flush now: the flush path issues it later.
                let req = &mut self.reqs[r as usize];
                req.queued_flush = true;
                req.pending = req.pending.saturating_sub(1);
                let _ = self.flush_wait.push(r);
                return 0;
            }
        }
        self.cmd_done(r, f)
    }
    /// Records the error `e(request)` on every request command `c` serves
    /// (the first error of a request is the one it reports).
    pub(super) fn cmd_error(&mut self, c: usize, e: impl Fn(&Req) -> IoError) {
        let r = self.cmds[c].req;
        if r != NO_REQ {
            let err = e(&self.reqs[r as usize]);
            self.reqs[r as usize].error.get_or_insert(err);
            return;
        }
        for k in 0..self.cmds[c].members.len() {
            let m = self.cmds[c].members[k] as usize;
            let err = e(&self.reqs[m]);
            self.reqs[m].error.get_or_insert(err);
        }
    }
    /// Frees command `c` and completes its part of every request it serves.
    pub(super) fn release_and_done(&mut self, c: usize, f: &mut dyn FnMut(u64, Result<(), IoError>)) -> usize {
        let r = self.cmds[c].req;
        if r != NO_REQ {
            self.release_cmd(c);
            return self.cmd_done(r, f);
        }
        // The slot stays taken while the callbacks run (they may submit
        // new writes), so its member list is not reused under us.
        let mut members = std::mem::take(&mut self.cmds[c].members);
        let mut done = 0;
        for &m in &members {
            done += self.cmd_done(m, f);
        }
        members.clear();
        self.cmds[c].members = members;
        self.release_cmd(c);
        done
    }
    /// One command of request `r` finished.
    pub(super) fn cmd_done(&mut self, r: u16, f: &mut dyn FnMut(u64, Result<(), IoError>)) -> usize {
        let req = &mut self.reqs[r as usize];
        req.pending = req.pending.saturating_sub(1);
        if req.pending > 0 {
            return 0;
        }
        self.finish(r, f)
    }
    /// Completes request `r`: map work for trims, counters, callback.
    pub(super) fn finish(&mut self, r: u16, f: &mut dyn FnMut(u64, Result<(), IoError>)) -> usize {
        let req = self.reqs[r as usize];
        if req.pending > 0 {
            return 0;
        }
        match req.kind {
            ReqKind::Trim => {
                if req.note != UNMAPPED {
                    if req.error.is_none() {
                        for l in req.lba..req.lba + req.count {
                            self.vsl.install_trim(l, req.note);
                        }
                        self.tally.trims += 1;
                        self.tally.trimmed_sectors += req.count;
                    }
                    // Unpin (see on_program).
                    self.vsl.blocks.get(self.layout.block_of(req.note)).note_refs.fetch_sub(1, Ordering::AcqRel);
                }
            }
            ReqKind::Write | ReqKind::Atomic => {
                let idx = (req.epoch % EPOCHS as u64) as usize;
                self.epochs[idx] = self.epochs[idx].saturating_sub(1);
                if req.error.is_none() {
                    self.tally.user_sectors_written += req.count;
                    if req.kind == ReqKind::Atomic {
                        self.tally.atomic_writes += 1;
                    }
                }
            }
            ReqKind::Read => {
                self.read_done(req.read_no);
                if req.error.is_none() {
                    self.tally.user_sectors_read += req.count;
                }
            }
            ReqKind::Flush => {
                if req.error.is_none() {
                    self.tally.flushes += 1;
                }
            }
        }
        self.req_free.push(r);
        self.outstanding = self.outstanding.saturating_sub(1);
        f(req.ctx, req.error.map_or(Ok(()), Err));
        1
    }
    /// Starts card flushes for flush requests whose earlier writes are done.
    pub(super) fn start_flushes(&mut self) {
        while self.oldest_epoch < self.cur_epoch && self.epochs[(self.oldest_epoch % EPOCHS as u64) as usize] == 0 {
            self.oldest_epoch += 1;
        }
        while let Some(r) = self.flush_wait.front() {
            let req = self.reqs[r as usize];
            let ready = req.kind == ReqKind::Trim || req.epoch < self.oldest_epoch;
            if !ready || self.cmd_free.is_empty() || self.q.free_slots() == 0 {
                break;
            }
            self.flush_wait.pop();
            let c = self.cmd_free.pop().unwrap_or(0) as usize;
            self.cmds[c].kind = CmdKind::Flush;
            self.cmds[c].req = r;
            self.cmds[c].n = 0;
            if self.q.flush(c as u64).is_ok() {
                self.reqs[r as usize].pending += 1;
            } else {
                // Slots were checked above; a refusal here is a bug.
                self.cmd_free.push(c as u16);
                self.reqs[r as usize].error.get_or_insert(IoError::Media {
                    lba: 0,
                    status: CardStatus::Internal,
                });
                let _ = self.ready.push(r);
            }
        }
    }
}
