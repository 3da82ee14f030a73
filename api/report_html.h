/*
 * report_html.h — the report page (report_html.c, docs/eval.md).
 */
#ifndef CAL_API_REPORT_HTML_H
#define CAL_API_REPORT_HTML_H

#include <jansson.h>

/* A self-contained HTML page (heap, NUL-terminated; NULL when out of
 * memory) for a checkpoint's calibd_report.json: a summary table and inline
 * SVG plots with ids plot-weight-sqnr, plot-layer-error,
 * plot-expert-tokens-<layer> (experts without tokens marked),
 * plot-throughput; a plot without data is a paragraph with that id. */
char *cal_report_html(const json_t *report, const char *title);

#endif
