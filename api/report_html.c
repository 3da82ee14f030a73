/*
 * report_html.c — the report page: one self-contained HTML file made from
 * a quantized checkpoint's calibd_report.json (docs/eval.md "The report
 * page"), with inline SVG plots and no script, style sheet, font or image
 * from anywhere else.  `calibd report OUT --html FILE` and GET
 * /v1/jobs/{id}/report.html serve it.
 */
#include "report_html.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define W 760
#define H 220
#define ML 56  /* left margin (axis labels) */
#define MB 34  /* bottom margin */
#define MT 12

static void esc(FILE *f, const char *s)
{
	for (; s && *s; s++) {
		switch (*s) {
		case '<': fputs("&lt;", f); break;
		case '>': fputs("&gt;", f); break;
		case '&': fputs("&amp;", f); break;
		case '"': fputs("&quot;", f); break;
		default: fputc(*s, f);
		}
	}
}

static void svg_open(FILE *f, const char *id, const char *title, const char *ylabel, double ymin,
		     double ymax)
{
	fprintf(f, "<h2>");
	esc(f, title);
	fprintf(f, "</h2>\n<svg id=\"%s\" class=\"plot\" xmlns=\"http://www.w3.org/2000/svg\" "
		"width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" role=\"img\">\n<title>", id, W, H,
		W, H);
	esc(f, title);
	fprintf(f, "</title>\n<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#333\"/>\n", ML,
		H - MB, W - 8, H - MB);
	fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#333\"/>\n", ML, MT, ML,
		H - MB);
	for (int k = 0; k <= 4; k++) {
		double v = ymin + (ymax - ymin) * k / 4;
		double y = H - MB - (H - MB - MT) * k / 4.0;
		fprintf(f, "<text x=\"%d\" y=\"%.1f\" font-size=\"10\" text-anchor=\"end\">%.3g</text>\n",
			ML - 4, y + 3, v);
	}
	fprintf(f, "<text x=\"12\" y=\"%d\" font-size=\"11\" transform=\"rotate(-90 12 %d)\" "
		"text-anchor=\"middle\">", (H - MB + MT) / 2, (H - MB + MT) / 2);
	esc(f, ylabel);
	fputs("</text>\n", f);
}

/* The x axis label, and the end of the chart. */
static void svg_close(FILE *f, const char *xlabel)
{
	fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"11\" text-anchor=\"middle\">", (W + ML) / 2,
		H - 4);
	esc(f, xlabel);
	fputs("</text>\n</svg>\n", f);
}

/* A bar chart of n values (NAN: no bar; negative values hang below the
 * zero line); mark[i] != 0 draws a red cross on the axis instead (an
 * expert that saw no token). */
static void bars(FILE *f, const char *id, const char *title, const char *ylabel,
		 const char *xlabel, size_t n, const double *v, const int *mark)
{
	double ymax = 0, ymin = 0;
	for (size_t i = 0; i < n; i++) {
		if (isfinite(v[i]) && v[i] > ymax)
			ymax = v[i];
		if (isfinite(v[i]) && v[i] < ymin)
			ymin = v[i];
	}
	if (ymax - ymin <= 0)
		ymax = 1;
	svg_open(f, id, title, ylabel, ymin, ymax);
	double y0 = H - MB - (H - MB - MT) * (0 - ymin) / (ymax - ymin);
	if (ymin < 0)
		fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#999\"/>\n",
			ML, y0, W - 8, y0);
	double bw = (double)(W - 8 - ML) / (double)(n ? n : 1);
	for (size_t i = 0; i < n; i++) {
		double x = ML + bw * (double)i;
		if (mark && mark[i]) {
			double cx = x + bw / 2, cy = H - MB - 6;
			fprintf(f, "<path class=\"empty\" d=\"M%.1f %.1fL%.1f %.1fM%.1f %.1fL%.1f %.1f\" "
				"stroke=\"#c00\" stroke-width=\"2\"><title>%zu: no token</title></path>\n",
				cx - 4, cy - 4, cx + 4, cy + 4, cx - 4, cy + 4, cx + 4, cy - 4, i);
			continue;
		}
		if (!isfinite(v[i]))
			continue;
		double h = (H - MB - MT) * fabs(v[i]) / (ymax - ymin);
		fprintf(f, "<rect class=\"bar\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" "
			"fill=\"%s\"><title>%zu: %.4g</title></rect>\n", x + bw * 0.1,
			v[i] >= 0 ? y0 - h : y0, bw * 0.8, h, v[i] >= 0 ? "#4a7ab5" : "#b5874a", i, v[i]);
	}
	size_t step = n > 32 ? n / 16 : 1;
	for (size_t i = 0; i < n; i += step)
		fprintf(f, "<text x=\"%.1f\" y=\"%d\" font-size=\"9\" text-anchor=\"middle\">%zu</text>\n",
			ML + bw * ((double)i + 0.5), H - MB + 12, i);
	svg_close(f, xlabel);
}

/* A line through (x[i], y[i]). */
static void line(FILE *f, const char *id, const char *title, const char *ylabel,
		 const char *xlabel, size_t n, const double *x, const double *y)
{
	double xmax = 0, ymax = 0;
	for (size_t i = 0; i < n; i++) {
		xmax = x[i] > xmax ? x[i] : xmax;
		ymax = y[i] > ymax ? y[i] : ymax;
	}
	if (xmax <= 0)
		xmax = 1;
	if (ymax <= 0)
		ymax = 1;
	svg_open(f, id, title, ylabel, 0, ymax);
	fputs("<polyline class=\"series\" fill=\"none\" stroke=\"#4a7ab5\" stroke-width=\"2\" points=\"",
	      f);
	for (size_t i = 0; i < n; i++)
		fprintf(f, "%.1f,%.1f ", ML + (W - 8 - ML) * x[i] / xmax,
			H - MB - (H - MB - MT) * y[i] / ymax);
	fputs("\"/>\n", f);
	for (int k = 0; k <= 4; k++)
		fprintf(f, "<text x=\"%.1f\" y=\"%d\" font-size=\"9\" text-anchor=\"middle\">%.3g</text>\n",
			ML + (W - 8 - ML) * k / 4.0, H - MB + 12, xmax * k / 4);
	svg_close(f, xlabel);
}

static void none(FILE *f, const char *id, const char *title, const char *why)
{
	fprintf(f, "<h2>");
	esc(f, title);
	fprintf(f, "</h2>\n<p id=\"%s\" class=\"none\">", id);
	esc(f, why);
	fputs("</p>\n", f);
}

static void row(FILE *f, const char *k, const json_t *v)
{
	fputs("<tr><th>", f);
	esc(f, k);
	fputs("</th><td>", f);
	if (json_is_string(v))
		esc(f, json_string_value(v));
	else if (json_is_integer(v))
		fprintf(f, "%lld", (long long)json_integer_value(v));
	else if (json_is_number(v))
		fprintf(f, "%.6g", json_number_value(v));
	else
		fputs("–", f);
	fputs("</td></tr>\n", f);
}

/* The summary table: label, and where the value is in the report
 * (evaluation rows: in its "evaluation" object, shown when there is one):
 * obj.key, or key when obj is NULL. */
struct summary_row {
	const char *label;
	int eval;
	const char *obj, *key;
};

static const struct summary_row summary[] = {
	{"model type", 0, NULL, "model_type"},
	{"source", 0, NULL, "source"},
	{"recipe", 0, "recipe", "name"},
	{"quant_algo", 0, "resolved", "quant_algo"},
	{"kv_cache_quant_algo", 0, "resolved", "kv_cache_quant_algo"},
	{"calibration tokens", 0, "calibration", "tokens"},
	{"weight SQNR min (dB)", 0, "weight_sqnr", "min_db"},
	{"weight SQNR mean (dB)", 0, "weight_sqnr", "mean_db"},
	{"eval dataset", 1, NULL, "dataset"},
	{"eval tokens", 1, "data", "tokens"},
	{"eval sequences also in the calibration set", 1, "calibration_overlap", "sequences"},
	{"KL mean", 1, "kl", "mean"},
	{"KL median", 1, "kl", "median"},
	{"KL p99", 1, "kl", "p99"},
	{"top-1 agreement", 1, NULL, "top1_agreement"},
	{"perplexity original", 1, "perplexity", "original"},
	{"perplexity quantized", 1, "perplexity", "quantized"},
};

char *cal_report_html(const json_t *r, const char *title)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (!f)
		return NULL;
	const json_t *ev = json_object_get(r, "evaluation");
	fputs("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>", f);
	esc(f, title);
	fputs("</title>\n<style>body{font-family:sans-serif;margin:24px;max-width:800px}"
	      "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:2px 8px;"
	      "text-align:left}h2{font-size:16px;margin-top:24px}.none{color:#666}</style>\n"
	      "</head>\n<body>\n<h1>", f);
	esc(f, title);
	fputs("</h1>\n<table>\n", f);
	for (size_t k = 0; k < sizeof(summary) / sizeof(summary[0]); k++) {
		const struct summary_row *sr = &summary[k];
		const json_t *o = sr->eval ? ev : r;
		if (sr->eval && !ev)
			continue;
		row(f, sr->label, json_object_get(sr->obj ? json_object_get(o, sr->obj) : o, sr->key));
	}
	fputs("</table>\n", f);

	/* per-layer weight SQNR: the mean over the layer's quantized weights */
	const json_t *ws = json_object_get(json_object_get(r, "weight_sqnr"), "weights"), *x;
	size_t i, nl = 0;
	json_array_foreach(ws, i, x) {
		json_int_t L = json_integer_value(json_object_get(x, "layer"));
		if (json_is_integer(json_object_get(x, "layer")) && L >= 0 && (size_t)L + 1 > nl)
			nl = (size_t)L + 1;
	}
	if (nl) {
		double *v = calloc(nl, sizeof(double));
		size_t *c = calloc(nl, sizeof(size_t));
		if (v && c) {
			json_array_foreach(ws, i, x) {
				json_int_t L = json_integer_value(json_object_get(x, "layer"));
				if (L >= 0 && (size_t)L < nl && json_is_number(json_object_get(x, "sqnr_db"))) {
					v[L] += json_number_value(json_object_get(x, "sqnr_db"));
					c[L]++;
				}
			}
			for (size_t L = 0; L < nl; L++)
				v[L] = c[L] ? v[L] / (double)c[L] : NAN;
			bars(f, "plot-weight-sqnr", "Per-layer weight SQNR (mean over the layer's "
			     "quantized weights)", "SQNR (dB)", "layer", nl, v, NULL);
		}
		free(v);
		free(c);
	} else {
		none(f, "plot-weight-sqnr", "Per-layer weight SQNR", "no quantized weight");
	}

	/* per layer (calibd eval): the KL contribution (logit lens), then the
	 * teacher-forced relative error */
	const json_t *el = json_object_get(ev, "layers");
	static const struct {
		const char *id, *key, *title, *ylabel;
	} lp[] = {
		{"plot-layer-error", "kl_contribution", "Per-layer KL contribution (calibd eval: the "
		 "change of KL(original || quantized) read through the final norm and lm_head after "
		 "the layer; the bars sum to the model's KL)", "KL (nats)"},
		{"plot-layer-rel-error", "rel_error", "Per-layer error added by quantization (calibd "
		 "eval, teacher forced: ||delta|| / ||what the layer adds||)", "relative error"},
	};
	for (size_t k = 0; k < sizeof(lp) / sizeof(lp[0]); k++) {
		size_t n = json_array_size(el);
		double *v = n ? calloc(n, sizeof(double)) : NULL;
		if (!v) {
			none(f, lp[k].id, lp[k].title, n ? "out of memory" : "no evaluation in this "
			     "report (calibd eval, or a job with \"evaluate\")");
			continue;
		}
		json_array_foreach(el, i, x) {
			const json_t *e = json_object_get(x, lp[k].key);
			v[i] = json_is_number(e) ? json_number_value(e) : NAN;
		}
		bars(f, lp[k].id, lp[k].title, lp[k].ylabel, "layer", n, v, NULL);
		free(v);
	}

	/* per-expert token counts, one plot per MoE layer */
	const json_t *ex = json_object_get(r, "experts");
	size_t n_moe = 0;
	json_array_foreach(ex, i, x) {
		const json_t *t = json_object_get(x, "tokens");
		size_t n = json_array_size(t), k;
		const json_t *y;
		if (!n)
			continue;
		double *v = calloc(n, sizeof(double));
		int *m = calloc(n, sizeof(int));
		if (v && m) {
			json_array_foreach(t, k, y) {
				v[k] = (double)json_integer_value(y);
				m[k] = json_integer_value(y) == 0;
			}
			char id[64], ti[160];
			snprintf(id, sizeof(id), "plot-expert-tokens-%lld",
				 (long long)json_integer_value(json_object_get(x, "layer")));
			snprintf(ti, sizeof(ti), "Layer %lld: calibration tokens per expert (red cross: "
				 "no token)", (long long)json_integer_value(json_object_get(x, "layer")));
			bars(f, id, ti, "tokens", "expert", n, v, m);
			n_moe++;
		}
		free(v);
		free(m);
	}
	if (!n_moe)
		none(f, "plot-expert-tokens", "Calibration tokens per expert",
		     "no MoE layer with token counts");

	/* the calibration's throughput over time */
	const json_t *tl = json_object_get(r, "calibration_timeline");
	if (json_array_size(tl)) {
		size_t n = json_array_size(tl) + 1;
		double *tx = calloc(n, sizeof(double)), *ty = calloc(n, sizeof(double));
		if (tx && ty) {
			json_array_foreach(tl, i, x) {
				tx[i + 1] = json_number_value(json_object_get(x, "t"));
				ty[i + 1] = json_number_value(json_object_get(x, "tokens_per_s"));
			}
			ty[0] = n > 1 ? ty[1] : 0;
			line(f, "plot-throughput", "Calibration throughput over time (token-layers per "
			     "second so far, after each layer)", "token-layers/s", "seconds", n, tx, ty);
		}
		free(tx);
		free(ty);
	} else {
		none(f, "plot-throughput", "Calibration throughput over time",
		     "no timeline in this report (calibd quantize and jobs record one)");
	}
	fputs("</body>\n</html>\n", f);
	if (fclose(f)) {
		free(buf);
		return NULL;
	}
	return buf;
}
