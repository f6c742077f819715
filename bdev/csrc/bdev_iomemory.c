/* SPDX-License-Identifier: MIT OR Apache-2.0
 *
 * The SPDK side of libiomemory_bdev: registers the "iomemory" bdev module
 * and the bdev_iomemory_create / bdev_iomemory_delete RPCs from
 * constructors, fills struct spdk_bdev, wires io_device channels and
 * pollers, and forwards every request to the Rust half through the
 * opaque-handle API of iomemory_rs.h. Everything that decides anything
 * (parameter validation, request translation, lifecycle, DMA bookkeeping)
 * is in Rust; this file only does what needs SPDK's headers: macros,
 * static inline helpers, struct layouts.
 *
 * Built by bdev/build.rs against $SPDK_DIR/include (SPDK v26.05 only).
 */

#include "spdk/stdinc.h"

#include "spdk/bdev_module.h"
#include "spdk/env.h"
#include "spdk/json.h"
#include "spdk/jsonrpc.h"
#include "spdk/log.h"
#include "spdk/rpc.h"
#include "spdk/string.h"
#include "spdk/thread.h"
#include "spdk/util.h"
#include "spdk/uuid.h"
#include "spdk/version.h"

#include "iomemory_rs.h"

#if SPDK_VERSION_MAJOR != 26 || SPDK_VERSION_MINOR != 5
#error "libiomemory_bdev supports SPDK v26.05 only (the bdev module ABI changes between releases)"
#endif

/* The bdev ABI this file was written against. */
_Static_assert(sizeof(struct spdk_bdev) == 576, "struct spdk_bdev layout differs from SPDK v26.05");
_Static_assert(sizeof(struct iovec) == 16, "unexpected struct iovec");
_Static_assert(SPDK_BDEV_IO_TYPE_READ == IOMEM_RS_IO_READ, "io type READ");
_Static_assert(SPDK_BDEV_IO_TYPE_WRITE == IOMEM_RS_IO_WRITE, "io type WRITE");
_Static_assert(SPDK_BDEV_IO_TYPE_UNMAP == IOMEM_RS_IO_UNMAP, "io type UNMAP");
_Static_assert(SPDK_BDEV_IO_TYPE_FLUSH == IOMEM_RS_IO_FLUSH, "io type FLUSH");
_Static_assert(SPDK_BDEV_IO_TYPE_RESET == IOMEM_RS_IO_RESET, "io type RESET");
_Static_assert(SPDK_BDEV_IO_TYPE_WRITE_ZEROES == IOMEM_RS_IO_WRITE_ZEROES, "io type WRITE_ZEROES");

#define IOMEM_ERR_LEN 512

struct iomem_bdev {
	struct spdk_bdev bdev;
	struct iomem_rs_dev *rs;
	struct spdk_mem_map *mem_map;
	/* Where destruct started; the async detach finishes there. */
	struct spdk_thread *destruct_thread;
	bool registered;
	int detach_rc;
	char detach_msg[IOMEM_ERR_LEN];
	TAILQ_ENTRY(iomem_bdev) link;
};

struct iomem_io_channel {
	struct iomem_bdev *ib;
	struct iomem_rs_chan *rs;
	struct spdk_poller *poller;
};

static TAILQ_HEAD(, iomem_bdev) g_iomem_bdevs = TAILQ_HEAD_INITIALIZER(g_iomem_bdevs);

static int iomem_module_init(void);
static void iomem_module_fini(void);

static int
iomem_get_ctx_size(void)
{
	return 0;
}

static struct spdk_bdev_module g_iomem_if = {
	.name = "iomemory",
	.module_init = iomem_module_init,
	.module_fini = iomem_module_fini,
	.get_ctx_size = iomem_get_ctx_size,
};

SPDK_BDEV_MODULE_REGISTER(iomemory, &g_iomem_if)

/* ---- logging and completion glue ---------------------------------------- */

static void
iomem_log(int level, const char *msg)
{
	switch (level) {
	case IOMEM_RS_LOG_ERROR:
		SPDK_ERRLOG("%s\n", msg);
		break;
	case IOMEM_RS_LOG_WARN:
		SPDK_WARNLOG("%s\n", msg);
		break;
	default:
		SPDK_NOTICELOG("%s\n", msg);
		break;
	}
}

static enum spdk_bdev_io_status
iomem_status(int status)
{
	switch (status) {
	case IOMEM_RS_STATUS_SUCCESS:
		return SPDK_BDEV_IO_STATUS_SUCCESS;
	case IOMEM_RS_STATUS_NOMEM:
		return SPDK_BDEV_IO_STATUS_NOMEM;
	default:
		return SPDK_BDEV_IO_STATUS_FAILED;
	}
}

static void
iomem_complete(void *arg, uint64_t token, int status)
{
	(void)arg;
	spdk_bdev_io_complete((struct spdk_bdev_io *)(uintptr_t)token, iomem_status(status));
}

static int
iomem_module_init(void)
{
	if (iomem_rs_abi_version() != IOMEM_RS_ABI_VERSION) {
		SPDK_ERRLOG("iomemory: library ABI %u, shim ABI %u: rebuild libiomemory_bdev\n",
			    iomem_rs_abi_version(), IOMEM_RS_ABI_VERSION);
		return -EINVAL;
	}
	iomem_rs_set_logger(iomem_log);
	return 0;
}

static void
iomem_module_fini(void)
{
	/* Every iomemory bdev was unregistered (and its card detached) by the
	 * bdev layer before module_fini runs. */
	iomem_rs_set_logger(NULL);
}

/* ---- DMA: mirror SPDK's registered memory into the card's IOVA space ---- */

static int
iomem_mem_notify(void *cb_ctx, struct spdk_mem_map *map, enum spdk_mem_map_notify_action action,
		 void *vaddr, size_t size)
{
	struct iomem_bdev *ib = cb_ctx;

	(void)map;
	if (action == SPDK_MEM_MAP_NOTIFY_REGISTER) {
		if (!iomem_rs_dev_dma_register(ib->rs, vaddr, size)) {
			SPDK_WARNLOG("%s: %zu bytes at %p not reachable by the card; their I/O is bounced\n",
				     ib->bdev.name, size, vaddr);
		}
	} else {
		iomem_rs_dev_dma_unregister(ib->rs, vaddr, size);
	}
	return 0;
}

static const struct spdk_mem_map_ops g_iomem_mem_ops = {
	.notify_cb = iomem_mem_notify,
	.are_contiguous = NULL,
};

/* ---- channels and pollers ---------------------------------------------- */

static int
iomem_poll(void *arg);

static void
iomem_hot_remove_msg(void *arg)
{
	char *name = arg;
	int rc = spdk_bdev_unregister_by_name(name, &g_iomem_if, NULL, NULL);

	if (rc != 0) {
		SPDK_NOTICELOG("iomemory: hot remove of %s: already gone (%s)\n", name, spdk_strerror(-rc));
	}
	free(name);
}

static int
iomem_poll(void *arg)
{
	struct iomem_io_channel *ch = arg;
	bool hot_remove = false;
	int n = iomem_rs_chan_poll(ch->rs, iomem_complete, NULL, &hot_remove);

	if (hot_remove) {
		char *name = strdup(ch->ib->bdev.name);

		if (name != NULL) {
			spdk_thread_send_msg(spdk_thread_get_app_thread(), iomem_hot_remove_msg, name);
		}
	}
	return n > 0 ? SPDK_POLLER_BUSY : SPDK_POLLER_IDLE;
}

static int
iomem_ch_create(void *io_device, void *ctx_buf)
{
	struct iomem_bdev *ib = io_device;
	struct iomem_io_channel *ch = ctx_buf;
	char err[IOMEM_ERR_LEN] = "";

	ch->ib = ib;
	ch->rs = iomem_rs_chan_open(ib->rs, err, sizeof(err));
	if (ch->rs == NULL) {
		SPDK_ERRLOG("%s: %s\n", ib->bdev.name, err);
		return -ENOMEM;
	}
	ch->poller = SPDK_POLLER_REGISTER(iomem_poll, ch, 0);
	if (ch->poller == NULL) {
		iomem_rs_chan_close(ch->rs, iomem_complete, NULL);
		ch->rs = NULL;
		return -ENOMEM;
	}
	return 0;
}

static void
iomem_ch_destroy(void *io_device, void *ctx_buf)
{
	struct iomem_io_channel *ch = ctx_buf;
	int drained;

	(void)io_device;
	spdk_poller_unregister(&ch->poller);
	drained = iomem_rs_chan_close(ch->rs, iomem_complete, NULL);
	if (drained > 0) {
		SPDK_NOTICELOG("%s: completed %d request(s) while closing a channel\n",
			       ch->ib->bdev.name, drained);
	}
	ch->rs = NULL;
}

/* ---- the bdev function table ------------------------------------------- */

static void
iomem_submit(struct spdk_io_channel *_ch, struct spdk_bdev_io *bdev_io)
{
	struct iomem_io_channel *ch = spdk_io_channel_get_ctx(_ch);
	struct iomem_rs_io io = {
		.size = sizeof(io),
		.io_type = bdev_io->type,
		.token = (uint64_t)(uintptr_t)bdev_io,
	};
	int status = IOMEM_RS_STATUS_FAILED;

	switch (bdev_io->type) {
	case SPDK_BDEV_IO_TYPE_READ:
	case SPDK_BDEV_IO_TYPE_WRITE:
		io.iovs = bdev_io->u.bdev.iovs;
		io.iovcnt = (uint32_t)bdev_io->u.bdev.iovcnt;
	/* fallthrough */
	case SPDK_BDEV_IO_TYPE_UNMAP:
	case SPDK_BDEV_IO_TYPE_WRITE_ZEROES:
	case SPDK_BDEV_IO_TYPE_FLUSH:
		io.offset_blocks = bdev_io->u.bdev.offset_blocks;
		io.num_blocks = bdev_io->u.bdev.num_blocks;
		break;
	default:
		break;
	}
	if (iomem_rs_chan_submit(ch->rs, &io, &status) != 0) {
		spdk_bdev_io_complete(bdev_io, iomem_status(status));
	}
}

static void
iomem_get_buf_cb(struct spdk_io_channel *ch, struct spdk_bdev_io *bdev_io, bool success)
{
	if (!success) {
		spdk_bdev_io_complete(bdev_io, SPDK_BDEV_IO_STATUS_FAILED);
		return;
	}
	iomem_submit(ch, bdev_io);
}

static void
iomem_submit_request(struct spdk_io_channel *ch, struct spdk_bdev_io *bdev_io)
{
	if (bdev_io->type == SPDK_BDEV_IO_TYPE_READ &&
	    (bdev_io->u.bdev.iovs == NULL || bdev_io->u.bdev.iovs[0].iov_base == NULL)) {
		spdk_bdev_io_get_buf(bdev_io, iomem_get_buf_cb,
				     bdev_io->u.bdev.num_blocks * bdev_io->bdev->blocklen);
		return;
	}
	iomem_submit(ch, bdev_io);
}

static bool
iomem_io_type_supported(void *ctx, enum spdk_bdev_io_type io_type)
{
	(void)ctx;
	return iomem_rs_io_type_supported((uint32_t)io_type);
}

static struct spdk_io_channel *
iomem_get_io_channel(void *ctx)
{
	return spdk_get_io_channel(ctx);
}

static int
iomem_dump_info_json(void *ctx, struct spdk_json_write_ctx *w)
{
	struct iomem_bdev *ib = ctx;
	char *info = iomem_rs_dev_info_json(ib->rs);

	spdk_json_write_name(w, "iomemory");
	spdk_json_write_val_raw(w, info, strlen(info));
	iomem_rs_string_free(info);
	return 0;
}

static void
iomem_write_config_json(struct spdk_bdev *bdev, struct spdk_json_write_ctx *w)
{
	struct iomem_bdev *ib = SPDK_CONTAINEROF(bdev, struct iomem_bdev, bdev);
	char *params = iomem_rs_dev_config_json(ib->rs);

	spdk_json_write_object_begin(w);
	spdk_json_write_named_string(w, "method", "bdev_iomemory_create");
	spdk_json_write_name(w, "params");
	spdk_json_write_val_raw(w, params, strlen(params));
	spdk_json_write_object_end(w);
	iomem_rs_string_free(params);
}

static void
iomem_free(struct iomem_bdev *ib)
{
	iomem_rs_dev_free(ib->rs);
	free(ib->bdev.name);
	free(ib);
}

static void
iomem_log_detach(struct iomem_bdev *ib, int rc, const char *msg)
{
	if (rc < 0) {
		SPDK_ERRLOG("%s: detach failed: %s\n", ib->bdev.name, msg != NULL ? msg : spdk_strerror(-rc));
	} else if (rc == 1) {
		SPDK_WARNLOG("%s: the card was lost; nothing checkpointed (the next attach scans)\n",
			     ib->bdev.name);
	} else {
		SPDK_NOTICELOG("%s: card checkpointed and detached\n", ib->bdev.name);
	}
}

/* Back on the destructing SPDK thread after the worker detached the card. */
static void
iomem_detach_finish(void *arg)
{
	struct iomem_bdev *ib = arg;

	iomem_log_detach(ib, ib->detach_rc, ib->detach_rc < 0 ? ib->detach_msg : NULL);
	if (ib->registered) {
		spdk_bdev_destruct_done(&ib->bdev, 0);
	}
	iomem_free(ib);
}

/* On the worker thread: hand the outcome back to the SPDK thread. */
static void
iomem_detach_done(void *arg, int rc, const char *msg)
{
	struct iomem_bdev *ib = arg;

	ib->detach_rc = rc;
	snprintf(ib->detach_msg, sizeof(ib->detach_msg), "%s", msg != NULL ? msg : "");
	if (spdk_thread_send_msg(ib->destruct_thread, iomem_detach_finish, ib) != 0) {
		/* The thread is gone (process exiting): nothing left to tell. */
		iomem_log_detach(ib, rc, msg);
	}
}

/* Every channel is gone: stop DMA bookkeeping, then checkpoint the card
 * on a worker thread (it writes the forward map: the reactor keeps
 * polling meanwhile) and finish destruct when it is done. */
static void
iomem_io_device_unregistered(void *io_device)
{
	struct iomem_bdev *ib = io_device;
	char err[IOMEM_ERR_LEN] = "";

	spdk_mem_map_free(&ib->mem_map);
	ib->destruct_thread = spdk_get_thread();
	if (iomem_rs_dev_detach_async(ib->rs, iomem_detach_done, ib) != 0) {
		ib->detach_rc = iomem_rs_dev_detach(ib->rs, err, sizeof(err));
		snprintf(ib->detach_msg, sizeof(ib->detach_msg), "%s", err);
		iomem_detach_finish(ib);
	}
}

static int
iomem_destruct(void *ctx)
{
	struct iomem_bdev *ib = ctx;

	iomem_rs_dev_begin_destruct(ib->rs);
	TAILQ_REMOVE(&g_iomem_bdevs, ib, link);
	spdk_io_device_unregister(ib, iomem_io_device_unregistered);
	return 1;
}

static const struct spdk_bdev_fn_table g_iomem_fn_table = {
	.destruct = iomem_destruct,
	.submit_request = iomem_submit_request,
	.io_type_supported = iomem_io_type_supported,
	.get_io_channel = iomem_get_io_channel,
	.dump_info_json = iomem_dump_info_json,
	.write_config_json = iomem_write_config_json,
};

/* ---- RPCs --------------------------------------------------------------- */

struct iomem_text {
	char *buf;
	size_t len;
	size_t cap;
};

static int
iomem_text_write(void *cb_ctx, const void *data, size_t size)
{
	struct iomem_text *t = cb_ctx;

	if (t->len + size + 1 > t->cap) {
		size_t cap = spdk_max(t->cap * 2, t->len + size + 1);
		char *buf = realloc(t->buf, cap);

		if (buf == NULL) {
			return -ENOMEM;
		}
		t->buf = buf;
		t->cap = cap;
	}
	memcpy(t->buf + t->len, data, size);
	t->len += size;
	t->buf[t->len] = '\0';
	return 0;
}

/* The RPC's params as JSON text, for the Rust side to parse and validate. */
static char *
iomem_params_text(const struct spdk_json_val *params, size_t *len)
{
	struct iomem_text t = {0};
	struct spdk_json_write_ctx *w;

	if (params == NULL) {
		return NULL;
	}
	w = spdk_json_write_begin(iomem_text_write, &t, 0);
	if (w == NULL) {
		return NULL;
	}
	spdk_json_write_val(w, params);
	if (spdk_json_write_end(w) != 0) {
		free(t.buf);
		return NULL;
	}
	*len = t.len;
	return t.buf;
}

/* Unwind a bdev whose registration failed (no channel can exist). */
static void
iomem_abandon(struct iomem_bdev *ib, bool io_device_registered)
{
	iomem_rs_dev_begin_destruct(ib->rs);
	if (io_device_registered) {
		spdk_io_device_unregister(ib, iomem_io_device_unregistered);
	} else {
		iomem_io_device_unregistered(ib);
	}
}

struct iomem_create_ctx {
	struct spdk_jsonrpc_request *request;
	struct spdk_thread *thread;
	struct iomem_rs_dev *rs;
	int code;
	char msg[IOMEM_ERR_LEN];
};

/* Back on the RPC's SPDK thread with the opened card: register the bdev. */
static void
iomem_create_finish(void *arg)
{
	struct iomem_create_ctx *ctx = arg;
	struct spdk_jsonrpc_request *request = ctx->request;
	struct iomem_rs_dev *rs = ctx->rs;
	struct spdk_json_write_ctx *w;
	struct iomem_bdev *ib;
	uint8_t uuid[16];
	int rc;

	if (rs == NULL) {
		spdk_jsonrpc_send_error_response(request, ctx->code, ctx->msg);
		free(ctx);
		return;
	}
	free(ctx);

	ib = calloc(1, sizeof(*ib));
	if (ib == NULL || (ib->bdev.name = strdup(iomem_rs_dev_name(rs))) == NULL) {
		free(ib);
		iomem_rs_dev_begin_destruct(rs);
		iomem_rs_dev_detach(rs, NULL, 0);
		iomem_rs_dev_free(rs);
		spdk_jsonrpc_send_error_response(request, -ENOMEM, spdk_strerror(ENOMEM));
		return;
	}
	ib->rs = rs;
	ib->bdev.product_name = "ioMemory";
	ib->bdev.blocklen = iomem_rs_dev_block_size(rs);
	ib->bdev.phys_blocklen = ib->bdev.blocklen;
	ib->bdev.blockcnt = iomem_rs_dev_num_blocks(rs);
	ib->bdev.write_cache = iomem_rs_dev_volatile_cache(rs) ? 1 : 0;
	ib->bdev.max_rw_size = iomem_rs_dev_max_rw_blocks(rs);
	ib->bdev.reset_io_drain_timeout = SPDK_BDEV_RESET_IO_DRAIN_RECOMMENDED_VALUE;
	iomem_rs_dev_uuid(rs, uuid);
	memcpy(&ib->bdev.uuid, uuid, sizeof(uuid));
	ib->bdev.ctxt = ib;
	ib->bdev.fn_table = &g_iomem_fn_table;
	ib->bdev.module = &g_iomem_if;

	/* Walks SPDK's existing registrations (REGISTER notifications) and
	 * follows later ones. */
	ib->mem_map = spdk_mem_map_alloc(0, &g_iomem_mem_ops, ib);
	if (ib->mem_map == NULL) {
		spdk_jsonrpc_send_error_response(request, -ENOMEM, "cannot allocate a memory map");
		iomem_abandon(ib, false);
		return;
	}
	spdk_io_device_register(ib, iomem_ch_create, iomem_ch_destroy,
				sizeof(struct iomem_io_channel), ib->bdev.name);
	rc = spdk_bdev_register(&ib->bdev);
	if (rc != 0) {
		spdk_jsonrpc_send_error_response_fmt(request, rc, "cannot register bdev %s: %s",
						     ib->bdev.name, spdk_strerror(-rc));
		iomem_abandon(ib, true);
		return;
	}
	ib->registered = true;
	TAILQ_INSERT_TAIL(&g_iomem_bdevs, ib, link);

	w = spdk_jsonrpc_begin_result(request);
	spdk_json_write_string(w, ib->bdev.name);
	spdk_jsonrpc_end_result(request, w);
}

/* On the worker thread that opened (formatted, recovered) the card. */
static void
iomem_create_done(void *arg, struct iomem_rs_dev *rs, int code, const char *msg)
{
	struct iomem_create_ctx *ctx = arg;

	ctx->rs = rs;
	ctx->code = code;
	snprintf(ctx->msg, sizeof(ctx->msg), "%s", msg != NULL ? msg : "");
	if (spdk_thread_send_msg(ctx->thread, iomem_create_finish, ctx) != 0) {
		/* The RPC's thread is gone (the app is exiting): undo the open. */
		if (rs != NULL) {
			iomem_rs_dev_begin_destruct(rs);
			iomem_rs_dev_detach(rs, NULL, 0);
			iomem_rs_dev_free(rs);
		}
		free(ctx);
	}
}

static void
rpc_bdev_iomemory_create(struct spdk_jsonrpc_request *request, const struct spdk_json_val *params)
{
	char err[IOMEM_ERR_LEN] = "";
	char name[256] = "";
	size_t len = 0;
	char *text = iomem_params_text(params, &len);
	struct iomem_create_ctx *ctx;
	int rc;

	if (text == NULL) {
		spdk_jsonrpc_send_error_response(request, SPDK_JSONRPC_ERROR_INVALID_PARAMS,
						 "bdev_iomemory_create needs params: {\"name\": ..., \"path\": ...}");
		return;
	}
	rc = iomem_rs_create_params(text, len, name, sizeof(name), err, sizeof(err));
	if (rc != 0) {
		free(text);
		spdk_jsonrpc_send_error_response(request, rc, err);
		return;
	}
	/* Refuse a taken name before opening (and maybe formatting) the card. */
	if (spdk_bdev_get_by_name(name) != NULL) {
		free(text);
		spdk_jsonrpc_send_error_response_fmt(request, -EEXIST,
						     "a bdev named %s already exists; choose another name", name);
		return;
	}
	ctx = calloc(1, sizeof(*ctx));
	if (ctx == NULL) {
		free(text);
		spdk_jsonrpc_send_error_response(request, -ENOMEM, spdk_strerror(ENOMEM));
		return;
	}
	ctx->request = request;
	ctx->thread = spdk_get_thread();
	/* Validation, the card open, a format or a recovery scan run on a
	 * worker thread; this SPDK thread keeps polling. */
	rc = iomem_rs_dev_open_async(text, len, iomem_create_done, ctx);
	free(text);
	if (rc != 0) {
		free(ctx);
		spdk_jsonrpc_send_error_response(request, rc, "cannot start a thread to open the card");
	}
}
SPDK_RPC_REGISTER("bdev_iomemory_create", rpc_bdev_iomemory_create, SPDK_RPC_RUNTIME)

static void
rpc_bdev_iomemory_delete_done(void *cb_arg, int bdeverrno)
{
	struct spdk_jsonrpc_request *request = cb_arg;

	if (bdeverrno != 0) {
		spdk_jsonrpc_send_error_response(request, bdeverrno, spdk_strerror(-bdeverrno));
		return;
	}
	spdk_jsonrpc_send_bool_response(request, true);
}

static void
rpc_bdev_iomemory_delete(struct spdk_jsonrpc_request *request, const struct spdk_json_val *params)
{
	char err[IOMEM_ERR_LEN] = "";
	char name[256] = "";
	size_t len = 0;
	char *text = iomem_params_text(params, &len);
	struct iomem_bdev *ib;
	int rc;

	if (text == NULL) {
		spdk_jsonrpc_send_error_response(request, SPDK_JSONRPC_ERROR_INVALID_PARAMS,
						 "bdev_iomemory_delete needs params: {\"name\": ...}");
		return;
	}
	rc = iomem_rs_delete_params(text, len, name, sizeof(name), err, sizeof(err));
	free(text);
	if (rc != 0) {
		spdk_jsonrpc_send_error_response(request, rc, err);
		return;
	}
	TAILQ_FOREACH(ib, &g_iomem_bdevs, link) {
		if (strcmp(ib->bdev.name, name) == 0) {
			break;
		}
	}
	if (ib == NULL) {
		spdk_jsonrpc_send_error_response_fmt(request, -ENODEV,
						     "no iomemory bdev named %s (see bdev_get_bdevs)", name);
		return;
	}
	rc = iomem_rs_dev_begin_delete(ib->rs, err, sizeof(err));
	if (rc != 0) {
		spdk_jsonrpc_send_error_response(request, rc, err);
		return;
	}
	/* Open descriptors get a remove event; in-flight I/O drains on its
	 * channels; destruct then detaches the card with a checkpoint. */
	spdk_bdev_unregister(&ib->bdev, rpc_bdev_iomemory_delete_done, request);
}
SPDK_RPC_REGISTER("bdev_iomemory_delete", rpc_bdev_iomemory_delete, SPDK_RPC_RUNTIME)

/* Fault injection on an emulated card: the card loses power (now, or
 * after N more commands); the pollers then see it offline and the bdev is
 * hot-removed, exactly as when a real card drops off the bus. */
static void
rpc_bdev_iomemory_inject_power_cut(struct spdk_jsonrpc_request *request,
				   const struct spdk_json_val *params)
{
	char err[IOMEM_ERR_LEN] = "";
	char name[256] = "";
	uint64_t after = 0;
	size_t len = 0;
	char *text = iomem_params_text(params, &len);
	struct iomem_bdev *ib;
	int rc;

	if (text == NULL) {
		spdk_jsonrpc_send_error_response(request, SPDK_JSONRPC_ERROR_INVALID_PARAMS,
						 "bdev_iomemory_inject_power_cut needs params: {\"name\": ...}");
		return;
	}
	rc = iomem_rs_power_cut_params(text, len, name, sizeof(name), &after, err, sizeof(err));
	free(text);
	if (rc != 0) {
		spdk_jsonrpc_send_error_response(request, rc, err);
		return;
	}
	TAILQ_FOREACH(ib, &g_iomem_bdevs, link) {
		if (strcmp(ib->bdev.name, name) == 0) {
			break;
		}
	}
	if (ib == NULL) {
		spdk_jsonrpc_send_error_response_fmt(request, -ENODEV,
						     "no iomemory bdev named %s (see bdev_get_bdevs)", name);
		return;
	}
	rc = iomem_rs_dev_power_cut(ib->rs, after, err, sizeof(err));
	if (rc != 0) {
		spdk_jsonrpc_send_error_response(request, rc, err);
		return;
	}
	SPDK_WARNLOG("%s: power cut injected (after %" PRIu64 " more card commands)\n", name, after);
	spdk_jsonrpc_send_bool_response(request, true);
}
SPDK_RPC_REGISTER("bdev_iomemory_inject_power_cut", rpc_bdev_iomemory_inject_power_cut, SPDK_RPC_RUNTIME)
