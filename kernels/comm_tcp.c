/*
 * comm_tcp.c — kernels/comm.h for one CPU rank per process over TCP.
 * (Being written: every call fails with CAL_ERR_UNSUPPORTED for now.)
 */
#include "kernels/comm_impl.h"

static enum cal_status tcp_world_init(struct cal_comm_world *w, struct cal_error *err)
{
	return cal_error_set(err, CAL_ERR_UNSUPPORTED, "comm tcp: not implemented yet");
}

static void tcp_world_fini(struct cal_comm_world *w)
{
}

const struct comm_world_ops cal_comm_tcp_ops = {
	.world_init = tcp_world_init,
	.world_fini = tcp_world_fini,
};
