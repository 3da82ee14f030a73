/*
 * job_data.c — the device and calibration data of the commands that run
 * the engine on a model (calibrate, eval, quantize): one home for turning
 * --device and --calib / --data into the job's options (cli.h).
 */
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"
#include "daemon/config.h"

int cal_cli_job_data(const char *cmd, const char *device, const char *calib, const char *datasets_file,
		     struct cal_job_opts *o, struct cal_cli_data *d, enum cal_status *ret_st,
		     struct cal_error *err)
{
	*d = (struct cal_cli_data){0};
	*ret_st = CAL_OK;
	int rc = cal_cli_devices(cmd, device, &o->devices);
	if (rc != CAL_EXIT_OK)
		return rc;
	enum cal_status xs = cal_config_calib_arg(cmd, &calib, datasets_file, &d->calib_owned);
	if (xs)
		return cal_exit_from_status(xs);
	*ret_st = cal_job_datasets_parse(calib, &d->ds, &o->n_datasets, err);
	o->datasets = d->ds;
	return CAL_EXIT_OK;
}

void cal_cli_data_free(struct cal_cli_data *d, const struct cal_job_opts *o)
{
	cal_job_datasets_free(d->ds, o->n_datasets);
	free(d->calib_owned);
	*d = (struct cal_cli_data){0};
}
