//! Submission of writes, atomic writes, trims and flushes: validation,
//! placement on the channel's append points, OOB records, card commands.

use super::*;

impl VslChannel {
    /// Fills page `i` of command `c` for the sectors `sectors` (indexes into
    /// the request) of `data` and writes its OOB record. Zero-copy when the
    /// page is one page-aligned sector.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fill_page(
        &mut self,
        c: usize,
        i: usize,
        data: &[IoVec],
        first_sector: u64,
        nsec: u32,
        lbas: &dyn Fn(u64) -> u64,
        mut rec: OobRecord,
    ) {
        let ss = self.sector_size;
        let (vi, off) = Self::locate(data, first_sector as usize * ss);
        let v = data[vi];
        let zero_copy = self.spp == 1 && (v.iova() + off as u64).is_multiple_of(self.page_size as u64);
        rec.count = nsec as u16;
        rec.slots = self.spp as u8;
        for k in 0..nsec as usize {
            rec.lbas[k] = lbas(first_sector + k as u64) as u32;
        }
        let crc;
        if zero_copy {
            self.cmds[c].data[i] = v.iova() + off as u64;
            self.cmds[c].staging[i] = NO_STAGE;
            // SAFETY: the caller of IoVec::new promised `len` readable bytes
            // at `ptr` that the card does not write during a write request;
            // `off + page_size <= len` because the sector lies in this iovec.
            let page = unsafe { std::slice::from_raw_parts(v.ptr().add(off), self.page_size) };
            crc = rec.data_crc(page);
        } else {
            let s = self.staging_free.pop().unwrap_or(0);
            let dst = self.stage_ptr(s);
            for k in 0..self.spp as usize {
                let sector = first_sector + k as u64;
                // SAFETY: staging page `s` is ours (popped from the free
                // list) and holds `spp * ss` bytes; the user buffer promised
                // readable sectors; the regions are distinct allocations.
                unsafe {
                    if k < nsec as usize {
                        let (svi, soff) = Self::locate(data, sector as usize * ss);
                        std::ptr::copy_nonoverlapping(data[svi].ptr().add(soff), dst.add(k * ss), ss);
                    } else {
                        std::ptr::write_bytes(dst.add(k * ss), 0, ss);
                    }
                }
            }
            self.cmds[c].data[i] = self.stage_iova(s);
            self.cmds[c].staging[i] = s;
            // SAFETY: the staging page is host-owned until submission.
            let page = unsafe { std::slice::from_raw_parts(dst, self.page_size) };
            crc = rec.data_crc(page);
        }
        self.store_oob(c, i, &rec, crc);
    }
    /// Submits the in-flight part `[off, off+cnt)` of program command `c`.
    pub(super) fn submit_program(&mut self, c: usize) -> Result<(), SubmitError> {
        let cmd = &self.cmds[c];
        let mut ppas = [Ppa::new(0, 0, 0); CMD_PAGES];
        if cmd.scattered {
            for (k, p) in ppas.iter_mut().enumerate().take(cmd.cnt as usize) {
                *p = self.layout.ppa(cmd.ppn[cmd.off as usize + k]);
            }
        } else {
            let die = self.layout.die_of_block(cmd.block);
            let blk = cmd.block % self.layout.geometry.blocks_per_die;
            for (k, p) in ppas.iter_mut().enumerate().take(cmd.cnt as usize) {
                *p = Ppa::new(die, blk, cmd.first + k as u32);
            }
        }
        let off = cmd.off as usize;
        let cnt = cmd.cnt as usize;
        let data = cmd.data;
        self.q
            .program(&ppas[..cnt], &data[off..off + cnt], Some(self.oob_iova(c, off)), c as u64)
            .map_err(|_| SubmitError::QueueFull)
    }
    /// Writes the sectors in `data` starting at `lba`. Completion comes
    /// through [`Self::poll`] with `ctx`, once every sector is programmed.
    /// `QueueFull`/`Busy` are retryable. Small writes are coalesced with
    /// others into shared pages (see `coalesce.rs`).
    pub fn write(&mut self, lba: u64, data: &[IoVec], ctx: u64) -> Result<(), SubmitError> {
        self.writes_allowed()?;
        let count = self.check_buffers(lba, data)?;
        let stage = if self.spp == 1 {
            data.iter()
                .map(|v| {
                    (0..v.len())
                        .step_by(self.sector_size)
                        .filter(|o| !(v.iova() + *o as u64).is_multiple_of(self.page_size as u64))
                        .count()
                })
                .sum()
        } else {
            count.div_ceil(self.spp as u64) as usize + 1
        };
        let (new_cmds, slots, pages) = self.write_needs(count);
        if self.req_free.is_empty()
            || self.cmd_free.len() < new_cmds
            || self.q.free_slots() < slots
            || self.staging_free.len() < stage
            || self.cur_epoch - self.oldest_epoch >= EPOCHS as u64 - 1
        {
            return Err(SubmitError::QueueFull);
        }
        let floor = self.floor();
        self.ring
            .ensure_room(&self.vsl.blocks, pages, floor)
            .map_err(|e| self.room_error(e))?;
        let seq = self.vsl.next_seq();
        let r = self.alloc_req(ctx, ReqKind::Write);
        self.reqs[r as usize].lba = lba;
        self.reqs[r as usize].count = count;
        self.begin_write_epoch(r)?;
        self.append_write(r, lba, data, count, seq);
        Ok(())
    }
    /// Writes several (possibly non-contiguous) ranges as one atomic unit:
    /// after any crash either every sector of every range reads the new data
    /// or none does. At most [`Vsl::max_atomic_sectors`] sectors in total.
    pub fn atomic_write(&mut self, ranges: &[(u64, &[IoVec])], ctx: u64) -> Result<(), SubmitError> {
        self.writes_allowed()?;
        if ranges.is_empty() {
            return Err(SubmitError::Invalid("an atomic write needs at least one range"));
        }
        let mut total = 0u64;
        let mut spans = [(0u64, 0u64); 64];
        if ranges.len() > spans.len() {
            return Err(SubmitError::TooManyBuffers {
                given: ranges.len(),
                max: spans.len(),
            });
        }
        for (i, (lba, data)) in ranges.iter().enumerate() {
            let n = self.check_buffers(*lba, data)?;
            spans[i] = (*lba, n);
            total += n;
        }
        let max = self.vsl.max_atomic_sectors();
        if total > max as u64 {
            return Err(SubmitError::AtomicTooLarge { sectors: total, max });
        }
        for i in 0..ranges.len() {
            for j in i + 1..ranges.len() {
                let (a, an) = spans[i];
                let (b, bn) = spans[j];
                if a < b + bn && b < a + an {
                    return Err(SubmitError::Invalid("atomic write ranges overlap"));
                }
            }
        }
        let spp = self.spp as u64;
        let pages = total.div_ceil(spp) as u32;
        let ppb = self.layout.pages_per_block();
        if !self.submit_open() {
            return Err(SubmitError::QueueFull);
        }
        let pad_cmds = (ppb as usize).div_ceil(CMD_PAGES);
        let stage = pages as usize; // upper bound
        if !self.have_room(1 + pad_cmds, stage) || self.cur_epoch - self.oldest_epoch >= EPOCHS as u64 - 1 {
            return Err(SubmitError::QueueFull);
        }
        let floor = self.floor();
        let (pad, ext) = self
            .ring
            .take_contiguous(&self.vsl.blocks, pages, floor)
            .map_err(|e| self.room_error(e))?;
        let seq = self.vsl.next_seq();
        let r = self.alloc_req(ctx, ReqKind::Atomic);
        self.reqs[r as usize].count = total;
        self.begin_write_epoch(r)?;
        if let Some(pad) = pad {
            self.submit_pad(r, pad.block, pad.first, pad.count);
        }
        let c = self.cmd_free.pop().unwrap_or(0) as usize;
        {
            let cmd = &mut self.cmds[c];
            cmd.kind = CmdKind::Atomic;
            cmd.req = r;
            cmd.n = pages;
            cmd.off = 0;
            cmd.cnt = pages;
            cmd.block = ext.block;
            cmd.first = ext.first;
            cmd.seq = seq;
            cmd.stalled = false;
        }
        // Sector k of the group is sector `k - start` of the range holding it.
        let nranges = ranges.len();
        let lba_of = |k: u64| -> u64 {
            let mut k = k;
            for &(lba, n) in spans.iter().take(nranges) {
                if k < n {
                    return lba + k;
                }
                k -= n;
            }
            u64::MAX
        };
        for i in 0..pages as usize {
            let first_sector = i as u64 * spp;
            let nsec = (total - first_sector).min(spp) as u32;
            let mut rec = OobRecord::new(PageKind::Data, seq);
            rec.flags = FLAG_ATOMIC | if i as u32 + 1 == pages { FLAG_ATOMIC_COMMIT } else { 0 };
            rec.group = seq;
            rec.member_index = i as u16;
            rec.member_count = pages as u16;
            // Locate the sector's buffer within its range.
            let (ri, within) = {
                let mut k = first_sector;
                let mut found = (0usize, 0u64);
                for (idx, &(_, n)) in spans.iter().take(nranges).enumerate() {
                    if k < n {
                        found = (idx, k);
                        break;
                    }
                    k -= n;
                }
                found
            };
            if spp == 1 {
                self.fill_page(c, i, ranges[ri].1, within, nsec, &|s| lba_of(first_sector + (s - within)), rec);
            } else {
                self.fill_atomic_page(c, i, ranges, &spans[..nranges], first_sector, nsec, &lba_of, rec);
            }
        }
        if self.submit_program(c).is_ok() {
            self.reqs[r as usize].pending += 1;
        } else {
            self.reqs[r as usize].error = Some(IoError::Media {
                lba: spans[0].0,
                status: CardStatus::Internal,
            });
            self.release_cmd(c);
        }
        if self.reqs[r as usize].pending == 0 {
            let _ = self.ready.push(r);
        }
        Ok(())
    }
    /// Fills a staged page of an atomic group whose sectors may come from
    /// several ranges (sub-page sectors).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fill_atomic_page(
        &mut self,
        c: usize,
        i: usize,
        ranges: &[(u64, &[IoVec])],
        spans: &[(u64, u64)],
        first_sector: u64,
        nsec: u32,
        lba_of: &dyn Fn(u64) -> u64,
        mut rec: OobRecord,
    ) {
        let ss = self.sector_size;
        let s = self.staging_free.pop().unwrap_or(0);
        let dst = self.stage_ptr(s);
        rec.count = nsec as u16;
        rec.slots = self.spp as u8;
        for k in 0..self.spp as usize {
            let g = first_sector + k as u64;
            // SAFETY: as in `fill_page`: our staging page, the caller's
            // promised-readable sectors, distinct regions.
            unsafe {
                if k < nsec as usize {
                    let mut rem = g;
                    let mut src = std::ptr::null_mut::<u8>();
                    for (idx, &(_, n)) in spans.iter().enumerate() {
                        if rem < n {
                            let (vi, off) = Self::locate(ranges[idx].1, rem as usize * ss);
                            src = ranges[idx].1[vi].ptr().add(off);
                            break;
                        }
                        rem -= n;
                    }
                    std::ptr::copy_nonoverlapping(src, dst.add(k * ss), ss);
                    rec.lbas[k] = lba_of(g) as u32;
                } else {
                    std::ptr::write_bytes(dst.add(k * ss), 0, ss);
                }
            }
        }
        self.cmds[c].data[i] = self.stage_iova(s);
        self.cmds[c].staging[i] = s;
        // SAFETY: the staging page is host-owned until submission.
        let page = unsafe { std::slice::from_raw_parts(dst, self.page_size) };
        self.store_oob(c, i, &rec, rec.data_crc(page));
    }
    /// Programs pad pages `[first, first+count)` of `block` for request `r`.
    pub(super) fn submit_pad(&mut self, r: u16, block: u32, first: u32, count: u32) {
        let zero_iova = self.zero_page.iova();
        // SAFETY: the zero page is ours and never written after creation.
        let zeros = unsafe { std::slice::from_raw_parts(self.zero_page.as_ptr(), self.page_size) };
        let rec = OobRecord::new(PageKind::Pad, 0);
        let crc = rec.data_crc(zeros);
        let mut done = 0;
        while done < count {
            let k = (count - done).min(CMD_PAGES as u32);
            let slot = if self.q.free_slots() > 0 { self.cmd_free.pop() } else { None };
            let Some(c) = slot else {
                // No command slot: keep the rest of the block as an append
                // point instead of leaving it unwritten forever.
                self.ring.adopt(crate::vsl::alloc::AppendPoint {
                    block,
                    next: first + done,
                });
                break;
            };
            let c = c as usize;
            {
                let cmd = &mut self.cmds[c];
                cmd.kind = CmdKind::Pad;
                cmd.req = r;
                cmd.n = k;
                cmd.off = 0;
                cmd.cnt = k;
                cmd.block = block;
                cmd.first = first + done;
                cmd.seq = 0;
                cmd.stalled = false;
                for i in 0..k as usize {
                    cmd.data[i] = zero_iova;
                    cmd.staging[i] = NO_STAGE;
                }
            }
            for i in 0..k as usize {
                self.store_oob(c, i, &rec, crc);
            }
            if self.submit_program(c).is_ok() {
                self.reqs[r as usize].pending += 1;
            } else {
                self.release_cmd(c);
            }
            done += k;
        }
    }
    /// Unmaps `count` sectors from `lba`: they read as zeros from now on,
    /// and stay so across power loss once the request completed.
    pub fn unmap(&mut self, lba: u64, count: u64, ctx: u64) -> Result<(), SubmitError> {
        self.writes_allowed()?;
        self.check_range(lba, count)?;
        if !self.submit_open() || !self.have_room(2, 1) {
            return Err(SubmitError::QueueFull);
        }
        let floor = self.floor();
        self.ring
            .ensure_room(&self.vsl.blocks, 1, floor)
            .map_err(|e| self.room_error(e))?;
        let Some(ext) = self.ring.take(1) else {
            return Err(SubmitError::Busy);
        };
        let seq = self.vsl.next_seq();
        let r = self.alloc_req(ctx, ReqKind::Trim);
        self.reqs[r as usize].lba = lba;
        self.reqs[r as usize].count = count;
        let c = self.cmd_free.pop().unwrap_or(0) as usize;
        let s = self.staging_free.pop().unwrap_or(0);
        let dst = self.stage_ptr(s);
        // Ranges of at most u32::MAX sectors; LBAs fit in u32 (Layout checks).
        let mut ranges = [TrimRange { lba: 0, count: 0 }; 4];
        let mut n = 0;
        let mut at = lba;
        let end = lba + count;
        while at < end && n < ranges.len() {
            let k = (end - at).min(u32::MAX as u64);
            ranges[n] = TrimRange {
                lba: at as u32,
                count: k as u32,
            };
            n += 1;
            at += k;
        }
        {
            self.page_buf.fill(0);
            encode_trim_ranges(&ranges[..n], &mut self.page_buf);
            // SAFETY: staging page `s` is ours; page_buf is host memory.
            unsafe { std::ptr::copy_nonoverlapping(self.page_buf.as_ptr(), dst, self.page_size) };
        }
        let mut rec = OobRecord::new(PageKind::Trim, seq);
        rec.count = n as u16;
        self.store_oob(c, 0, &rec, rec.data_crc(&self.page_buf));
        {
            let cmd = &mut self.cmds[c];
            cmd.kind = CmdKind::Note;
            cmd.req = r;
            cmd.n = 1;
            cmd.off = 0;
            cmd.cnt = 1;
            cmd.block = ext.block;
            cmd.first = ext.first;
            cmd.seq = seq;
            cmd.stalled = false;
            cmd.data[0] = self.staging.iova() + (s as usize * self.page_size) as u64;
            cmd.staging[0] = s;
        }
        if self.submit_program(c).is_ok() {
            self.reqs[r as usize].pending += 1;
        } else {
            self.release_cmd(c);
            self.reqs[r as usize].error = Some(IoError::Media {
                lba,
                status: CardStatus::Internal,
            });
            let _ = self.ready.push(r);
        }
        Ok(())
    }
    /// Same as [`Self::unmap`]: unmapped sectors read as zeros.
    pub fn write_zeroes(&mut self, lba: u64, count: u64, ctx: u64) -> Result<(), SubmitError> {
        self.unmap(lba, count, ctx)
    }
    /// Completes once every write acknowledged before it is durable.
    pub fn flush(&mut self, ctx: u64) -> Result<(), SubmitError> {
        if self.vsl.is_offline() {
            return Err(SubmitError::Offline);
        }
        if self.req_free.is_empty() || self.cur_epoch - self.oldest_epoch >= EPOCHS as u64 - 1 {
            return Err(SubmitError::QueueFull);
        }
        let r = self.alloc_req(ctx, ReqKind::Flush);
        self.reqs[r as usize].epoch = self.cur_epoch;
        self.cur_epoch += 1;
        let _ = self.flush_wait.push(r);
        Ok(())
    }
}
