//! Reads: map lookups (pinning the blocks read from against erasure),
//! page reads into staging or straight into the caller's buffer, and the
//! checks on completion (OOB names the LBA, data matches its CRC).
//!
//! Zero-copy: with one sector per page, a page-aligned destination takes
//! the whole page; with several sectors per page, a run of sectors of one
//! page goes to a sector-aligned destination through a column read (only
//! those sectors cross the bus) and is checked against its per-sector CRCs.
//! Everything else is read whole into a staging page and copied out.

use crate::card::protocol::COLUMN_UNIT;
use crate::card::Column;

use super::*;

impl VslChannel {
    /// Reads sectors from `lba` into `data`. Never-written and unmapped
    /// sectors read as zeros.
    pub fn read(&mut self, lba: u64, data: &[IoVec], ctx: u64) -> Result<(), SubmitError> {
        if self.vsl.is_offline() {
            return Err(SubmitError::Offline);
        }
        let count = self.check_buffers(lba, data)?;
        if self.req_free.is_empty() || self.reads_issued - self.reads_retired >= READ_RING as u64 {
            return Err(SubmitError::QueueFull);
        }
        // Announce the read before any map lookup: from here until it is
        // marked done the groomer erases no block it may have found.
        let read_no = self.reads_issued;
        self.reads_issued += 1;
        self.vsl.read_gates.announce(self.gate, self.reads_issued);
        let ss = self.sector_size;
        self.runs.clear();
        let vsl = &*self.vsl;
        let layout = self.layout;
        let mut vi = 0usize;
        let mut voff = 0usize;
        let mut data_runs = 0usize;
        let mut staged = 0usize;
        for s in 0..count {
            while voff >= data[vi].len() {
                vi += 1;
                voff = 0;
            }
            let v = data[vi];
            let dst = v.ptr() as usize + voff;
            let dst_iova = v.iova() + voff as u64;
            voff += ss;
            let l = lba + s;
            let phys = match vsl.map.get(l) {
                p if p == UNMAPPED || vsl.is_trim(p) => UNMAPPED,
                p => p,
            };
            let zero = phys == UNMAPPED;
            let page = if zero { u32::MAX } else { layout.page_of(phys) };
            let slot = if zero { 0 } else { layout.slot_of(phys) as u8 };
            if let Some(last) = self.runs.last_mut() {
                let contiguous_dst = last.dst + last.nslots as usize * ss == dst;
                if contiguous_dst
                    && last.zero == zero
                    && (zero || (last.page == page && last.slot as u32 + last.nslots as u32 == slot as u32))
                    && (last.nslots as u32) < u8::MAX as u32
                {
                    last.nslots += 1;
                    continue;
                }
            }
            let zero_copy = !zero
                && if self.spp == 1 {
                    dst_iova.is_multiple_of(self.page_size as u64)
                } else {
                    dst_iova.is_multiple_of(COLUMN_UNIT as u64)
                };
            if !zero {
                data_runs += 1;
                if !zero_copy {
                    staged += 1;
                }
            }
            self.runs.push(Run {
                lba: l,
                dst,
                dst_iova: if zero_copy { dst_iova } else { 0 },
                page,
                slot,
                nslots: 1,
                zero,
            });
        }
        // One column per command: a run whose column differs from the
        // previous one starts a new command.
        let mut cmds = 0usize;
        let mut key = u32::MAX;
        let mut in_cmd = 0usize;
        for run in self.runs.iter().filter(|r| !r.zero) {
            let k = self.run_column(run).to_wire();
            if k != key || in_cmd == CMD_PAGES {
                cmds += 1;
                key = k;
                in_cmd = 0;
            }
            in_cmd += 1;
        }
        debug_assert!(cmds >= data_runs.div_ceil(CMD_PAGES));
        if !self.have_room(cmds, staged) {
            self.read_done(read_no);
            return Err(SubmitError::QueueFull);
        }
        let r = self.alloc_req(ctx, ReqKind::Read);
        self.reqs[r as usize].read_no = read_no;
        self.reqs[r as usize].lba = lba;
        self.reqs[r as usize].count = count;
        let mut c = usize::MAX;
        let mut n = 0usize;
        let mut col = Column::WHOLE_PAGE;
        let mut ppas = [Ppa::new(0, 0, 0); CMD_PAGES];
        for ri in 0..self.runs.len() {
            let run = self.runs[ri];
            if run.zero {
                // SAFETY: the caller promised `nslots * ss` writable bytes at
                // `dst` for this read.
                unsafe { std::ptr::write_bytes(run.dst as *mut u8, 0, run.nslots as usize * ss) };
                continue;
            }
            let run_col = self.run_column(&run);
            if c != usize::MAX && run_col != col {
                self.submit_read(c, &ppas[..n], col, r);
                c = usize::MAX;
            }
            if c == usize::MAX {
                col = run_col;
                c = self.cmd_free.pop().unwrap_or(0) as usize;
                let cmd = &mut self.cmds[c];
                cmd.kind = CmdKind::Read;
                cmd.req = r;
                cmd.n = 0;
                cmd.stalled = false;
                n = 0;
            }
            let (iova, stage) = if run.dst_iova != 0 {
                (run.dst_iova, NO_STAGE)
            } else {
                let s = self.staging_free.pop().unwrap_or(0);
                (self.stage_iova(s), s)
            };
            ppas[n] = layout.ppa(run.page);
            let cmd = &mut self.cmds[c];
            cmd.data[n] = iova;
            cmd.staging[n] = stage;
            cmd.runs[n] = run;
            n += 1;
            cmd.n = n as u32;
            if n == CMD_PAGES {
                self.submit_read(c, &ppas[..n], col, r);
                c = usize::MAX;
            }
        }
        if c != usize::MAX {
            self.submit_read(c, &ppas[..n], col, r);
        }
        if self.reqs[r as usize].pending == 0 {
            let _ = self.ready.push(r);
        }
        Ok(())
    }
    /// The part of its page a run reads: the whole page when it is staged
    /// or covers the page, else (zero-copy, several sectors per page) just
    /// its sectors.
    fn run_column(&self, run: &Run) -> Column {
        if run.dst_iova == 0 || run.nslots as u32 == self.spp {
            return Column::WHOLE_PAGE;
        }
        let units = (self.sector_size / COLUMN_UNIT) as u16;
        Column::new(run.slot as u16 * units, run.nslots as u16 * units)
    }
    pub(super) fn submit_read(&mut self, c: usize, ppas: &[Ppa], col: Column, r: u16) {
        let data = &self.cmds[c].data[..ppas.len()];
        let oob = Some(self.oob_iova(c, 0));
        let res = if col.is_whole_page() {
            self.q.read(ppas, data, oob, c as u64)
        } else {
            self.q.read_column(ppas, data, col, oob, c as u64)
        };
        if res.is_ok() {
            self.reqs[r as usize].pending += 1;
        } else {
            self.fail_read_cmd(c, IoError::Media {
                lba: self.cmds[c].runs[0].lba,
                status: CardStatus::Internal,
            });
        }
    }
    pub(super) fn fail_read_cmd(&mut self, c: usize, e: IoError) {
        let r = self.cmds[c].req as usize;
        self.reqs[r].error.get_or_insert(e);
        self.release_cmd(c);
    }
    pub(super) fn on_read(&mut self, c: usize, comp: Completion, f: &mut dyn FnMut(u64, Result<(), IoError>)) -> usize {
        let r = self.cmds[c].req;
        let n = self.cmds[c].n as usize;
        let ss = self.sector_size;
        if comp.corrected_bits > 0 {
            self.tally.ecc_corrected_bits += comp.corrected_bits as u64;
            self.tally.ecc_corrected_reads += 1;
        }
        let mut raw = [0u8; OOB_RECORD_LEN];
        for i in 0..n {
            let run = self.cmds[c].runs[i];
            if comp.status == CardStatus::PowerCut {
                self.reqs[r as usize].error.get_or_insert(IoError::PowerLost);
                break;
            }
            if comp.failed_mask & (1 << i) != 0 || (!comp.status.is_ok() && comp.failed_mask == 0) {
                let e = if comp.status == CardStatus::Uncorrectable {
                    self.vsl.ctr.uncorrectable_reads.fetch_add(1, Ordering::Relaxed);
                    IoError::Uncorrectable { lba: run.lba }
                } else {
                    IoError::Media {
                        lba: run.lba,
                        status: comp.status,
                    }
                };
                self.reqs[r as usize].error.get_or_insert(e);
                continue;
            }
            let stage = self.cmds[c].staging[i];
            // Where the run's sectors landed, and the whole page if it was
            // read whole (staged, or zero-copy of a run covering its page).
            let (sectors, page) = if stage != NO_STAGE {
                let page = self.stage_ptr(stage) as *const u8;
                (page.wrapping_add(run.slot as usize * ss), Some(page))
            } else if self.run_column(&run).is_whole_page() {
                (run.dst as *const u8, Some(run.dst as *const u8))
            } else {
                (run.dst as *const u8, None)
            };
            // SAFETY: the OOB slot (cmd c, page i) is ours and the read
            // completed, so the card no longer writes it.
            unsafe { std::ptr::copy_nonoverlapping(self.oob_ptr(c, i), raw.as_mut_ptr(), OOB_RECORD_LEN) };
            let ok = OobRecord::decode(&raw).is_some_and(|d| {
                let rec = &d.record;
                let slot = run.slot as usize;
                let nslots = run.nslots as usize;
                let lbas_ok = rec.kind == PageKind::Data
                    && slot + nslots <= rec.count as usize
                    && (0..nslots).all(|k| rec.lbas[slot + k] as u64 == run.lba + k as u64);
                if !lbas_ok {
                    return false;
                }
                // SAFETY: the read completed, so the card no longer writes
                // the staging page or the caller's buffer: `nslots * ss`
                // bytes of sectors at `sectors`, and `page_size` bytes at
                // `page` when the page was read whole (the staging page, or
                // a zero-copy run that covers its page).
                unsafe {
                    if rec.slots > 1 {
                        d.sectors_match(slot, ss, std::slice::from_raw_parts(sectors, nslots * ss))
                    } else {
                        page.is_some_and(|p| d.data_matches(std::slice::from_raw_parts(p, self.page_size)))
                    }
                }
            });
            if !ok {
                self.vsl.ctr.checksum_errors.fetch_add(1, Ordering::Relaxed);
                self.reqs[r as usize].error.get_or_insert(IoError::Corrupt { lba: run.lba });
                continue;
            }
            if stage != NO_STAGE {
                // SAFETY: source is the run's sectors in our staging page;
                // destination is the caller's buffer promised writable for
                // this read.
                unsafe { std::ptr::copy_nonoverlapping(sectors, run.dst as *mut u8, run.nslots as usize * ss) };
            }
        }
        self.release_cmd(c);
        self.cmd_done(r, f)
    }
}
