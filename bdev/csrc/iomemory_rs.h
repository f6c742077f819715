/* SPDX-License-Identifier: MIT OR Apache-2.0
 *
 * The C view of libiomemory_bdev's Rust half (bdev/src/ffi.rs): an
 * opaque-handle API that knows nothing of SPDK's structures. The SPDK shim
 * (bdev_iomemory.c) is its only caller. Keep in step with ffi.rs; sizes are
 * asserted on both sides and IOMEM_RS_ABI_VERSION is checked at module init.
 */
#ifndef IOMEMORY_RS_H
#define IOMEMORY_RS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define IOMEM_RS_ABI_VERSION 1

/* Values of enum spdk_bdev_io_type the library serves (asserted against
 * SPDK's header in the shim). */
#define IOMEM_RS_IO_READ 1
#define IOMEM_RS_IO_WRITE 2
#define IOMEM_RS_IO_UNMAP 3
#define IOMEM_RS_IO_FLUSH 4
#define IOMEM_RS_IO_RESET 5
#define IOMEM_RS_IO_WRITE_ZEROES 9

/* Completion statuses (enum IoStatus in io.rs). */
#define IOMEM_RS_STATUS_SUCCESS 0
#define IOMEM_RS_STATUS_FAILED 1
#define IOMEM_RS_STATUS_NOMEM 2

/* Log levels of the logger callback. */
#define IOMEM_RS_LOG_ERROR 0
#define IOMEM_RS_LOG_WARN 1
#define IOMEM_RS_LOG_NOTICE 2

struct iomem_rs_dev;
struct iomem_rs_chan;

/* One bdev I/O (struct IoDesc in io.rs). */
struct iomem_rs_io {
	uint32_t size;            /* sizeof(struct iomem_rs_io) */
	uint32_t io_type;         /* enum spdk_bdev_io_type */
	uint64_t offset_blocks;
	uint64_t num_blocks;
	const struct iovec *iovs; /* READ/WRITE only */
	uint32_t iovcnt;
	uint32_t reserved;
	uint64_t token;           /* returned with the completion */
};
_Static_assert(sizeof(struct iomem_rs_io) == 48, "struct iomem_rs_io must match IoDesc in io.rs");

typedef void (*iomem_rs_complete_fn)(void *arg, uint64_t token, int status);
typedef void (*iomem_rs_log_fn)(int level, const char *msg);

uint32_t iomem_rs_abi_version(void);
void iomem_rs_set_logger(iomem_rs_log_fn fn);
bool iomem_rs_io_type_supported(uint32_t io_type);

/* Validates bdev_iomemory_create params (JSON text) and opens the card.
 * NULL on failure, with a message in err and a JSON-RPC code in *err_code. */
struct iomem_rs_dev *iomem_rs_dev_open(const char *params_json, size_t len,
				       char *err, size_t err_len, int *err_code);
/* The same on a worker thread (format/recovery scan do not stall the SPDK
 * thread): done(arg, dev, code, msg) is called once, from that thread.
 * Returns 0, or -EAGAIN (done not called). */
typedef void (*iomem_rs_open_done_fn)(void *arg, struct iomem_rs_dev *dev, int code, const char *msg);
int iomem_rs_dev_open_async(const char *params_json, size_t len, iomem_rs_open_done_fn done, void *arg);
void iomem_rs_dev_free(struct iomem_rs_dev *dev);
const char *iomem_rs_dev_name(const struct iomem_rs_dev *dev);
uint32_t iomem_rs_dev_block_size(const struct iomem_rs_dev *dev);
uint64_t iomem_rs_dev_num_blocks(const struct iomem_rs_dev *dev);
bool iomem_rs_dev_volatile_cache(const struct iomem_rs_dev *dev);
uint32_t iomem_rs_dev_max_rw_blocks(const struct iomem_rs_dev *dev);
void iomem_rs_dev_uuid(const struct iomem_rs_dev *dev, uint8_t out[16]);
/* JSON text, freed with iomem_rs_string_free(). */
char *iomem_rs_dev_info_json(const struct iomem_rs_dev *dev);
char *iomem_rs_dev_config_json(const struct iomem_rs_dev *dev);
void iomem_rs_string_free(char *s);
/* Validates bdev_iomemory_create params without opening the card; 0 and
 * the bdev name in name_out, or a JSON-RPC code with a message in err. */
int iomem_rs_create_params(const char *params_json, size_t len, char *name_out, size_t name_len,
			   char *err, size_t err_len);
/* Parses bdev_iomemory_delete params; 0 and the name in name_out, or a
 * JSON-RPC code with a message in err. */
int iomem_rs_delete_params(const char *params_json, size_t len, char *name_out, size_t name_len,
			   char *err, size_t err_len);

/* bdev_iomemory_inject_power_cut: params, and the injection itself
 * (0, or -ENOTSUP for a card that is not emulated). */
int iomem_rs_power_cut_params(const char *params_json, size_t len, char *name_out, size_t name_len,
			      uint64_t *after, char *err, size_t err_len);
int iomem_rs_dev_power_cut(const struct iomem_rs_dev *dev, uint64_t after, char *err, size_t err_len);

/* SPDK memory (un)registration, from a spdk_mem_map notify callback.
 * register returns 1 if the card can reach the range, 0 if it is bounced. */
int iomem_rs_dev_dma_register(const struct iomem_rs_dev *dev, void *vaddr, size_t len);
void iomem_rs_dev_dma_unregister(const struct iomem_rs_dev *dev, void *vaddr, size_t len);

/* Lifecycle. begin_delete: 0 = call spdk_bdev_unregister now, -EBUSY =
 * already being removed. detach: 0 clean, 1 card lost, <0 error. */
int iomem_rs_dev_begin_delete(const struct iomem_rs_dev *dev, char *err, size_t err_len);
int iomem_rs_dev_begin_destruct(const struct iomem_rs_dev *dev);
int iomem_rs_dev_detach(const struct iomem_rs_dev *dev, char *err, size_t err_len);
/* Detach on a worker thread: done(arg, rc, msg) once, from that thread.
 * Returns 0, or -EAGAIN (done not called). */
typedef void (*iomem_rs_detach_done_fn)(void *arg, int rc, const char *msg);
int iomem_rs_dev_detach_async(const struct iomem_rs_dev *dev, iomem_rs_detach_done_fn done, void *arg);

/* Channels: one per SPDK thread. */
struct iomem_rs_chan *iomem_rs_chan_open(const struct iomem_rs_dev *dev, char *err, size_t err_len);
/* 0 = queued; 1 = finished at once with *status. */
int iomem_rs_chan_submit(struct iomem_rs_chan *ch, const struct iomem_rs_io *io, int *status);
/* Completes finished requests through cb; returns how many. *hot_remove is
 * set (once per device) when the card went offline. */
int iomem_rs_chan_poll(struct iomem_rs_chan *ch, iomem_rs_complete_fn cb, void *arg, bool *hot_remove);
/* Drains (completing through cb) and frees the channel. */
int iomem_rs_chan_close(struct iomem_rs_chan *ch, iomem_rs_complete_fn cb, void *arg);

#endif
