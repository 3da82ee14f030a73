/*
 * test_units_deploy.c — api-suite checks of the documents that describe the
 * service to others: the route table against api/openapi.yaml, the
 * Kubernetes manifests and overlays, the systemd unit, the Dockerfile.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <yaml.h>

#include "api/errors.h"
#include "api/http.h"
#include "api/jobspec.h"
#include "daemon/config.h"

static const char *srcdir(void)
{
	const char *s = getenv("SRCDIR");
	cr_assert(s, "SRCDIR must be set (meson test sets it)");
	return s;
}

/* ---- YAML helpers (document API; test inputs are our own files) ---- */

/* The node at path, components separated by any character of sep. */
static yaml_node_t *ynode_sep(yaml_document_t *d, yaml_node_t *n, const char *path, const char *sep)
{
	char buf[256];
	snprintf(buf, sizeof(buf), "%s", path);
	for (char *tok = strtok(buf, sep); tok && n; tok = strtok(NULL, sep)) {
		if (n->type == YAML_SEQUENCE_NODE) {
			long i = atol(tok);
			yaml_node_item_t *it = n->data.sequence.items.start + i;
			n = it < n->data.sequence.items.top ? yaml_document_get_node(d, *it) : NULL;
			continue;
		}
		if (n->type != YAML_MAPPING_NODE)
			return NULL;
		yaml_node_t *found = NULL;
		for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
			yaml_node_t *k = yaml_document_get_node(d, p->key);
			if (k->type == YAML_SCALAR_NODE && !strcmp((char *)k->data.scalar.value, tok))
				found = yaml_document_get_node(d, p->value);
		}
		n = found;
	}
	return n;
}

static yaml_node_t *ynode(yaml_document_t *d, yaml_node_t *n, const char *path)
{
	return ynode_sep(d, n, path, ".");
}

static const char *yscalar(yaml_document_t *d, yaml_node_t *root, const char *path)
{
	yaml_node_t *n = ynode(d, root, path);
	return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

/* Loads api/openapi.yaml into d (yaml_document_delete when done). */
static void openapi_load(yaml_document_t *d)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/api/openapi.yaml", srcdir());
	FILE *f = fopen(path, "rb");
	cr_assert(f, "%s", path);
	yaml_parser_t p;
	yaml_parser_initialize(&p);
	yaml_parser_set_input_file(&p, f);
	cr_assert(yaml_parser_load(&p, d), "openapi.yaml: %s", p.problem);
	yaml_parser_delete(&p);
	fclose(f);
}

Test(units, openapi_lists_exactly_the_routes)
{
	yaml_document_t d;
	openapi_load(&d);
	yaml_node_t *paths = ynode(&d, yaml_document_get_root_node(&d), "paths");
	cr_assert(paths && paths->type == YAML_MAPPING_NODE);
	size_t documented = 0;
	for (yaml_node_pair_t *pp = paths->data.mapping.pairs.start; pp < paths->data.mapping.pairs.top; pp++) {
		const char *route = (const char *)yaml_document_get_node(&d, pp->key)->data.scalar.value;
		yaml_node_t *ops = yaml_document_get_node(&d, pp->value);
		for (yaml_node_pair_t *op = ops->data.mapping.pairs.start; op < ops->data.mapping.pairs.top; op++) {
			const char *m = (const char *)yaml_document_get_node(&d, op->key)->data.scalar.value;
			if (!strcmp(m, "parameters") || !strcmp(m, "summary"))
				continue;
			char M[16];
			size_t i = 0;
			for (; m[i] && i < 15; i++)
				M[i] = (char)(m[i] >= 'a' && m[i] <= 'z' ? m[i] - 32 : m[i]);
			M[i] = '\0';
			int found = 0;
			for (size_t r = 0; r < cal_n_routes; r++)
				found |= !strcmp(cal_routes[r].method, M) && !strcmp(cal_routes[r].pattern, route);
			cr_expect(found, "openapi.yaml documents %s %s, which the route table lacks", M, route);
			documented++;
		}
	}
	cr_expect_eq(documented, cal_n_routes, "the route table has %zu routes, openapi.yaml documents %zu",
		     cal_n_routes, documented);
	yaml_document_delete(&d);
}

static const char *yval(yaml_document_t *d, yaml_node_pair_t *p, int key)
{
	yaml_node_t *n = yaml_document_get_node(d, key ? p->key : p->value);
	return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

/* Every key of a schema object is a schema keyword (an unquoted
 * "description: a, b" in a flow mapping makes "b" a key). */
static void schema_keys_ok(yaml_document_t *d, yaml_node_t *n, const char *where)
{
	static const char *const kw[] = {"type", "properties", "items", "required", "description", "oneOf", "anyOf",
					 "allOf", "not", "enum", "format", "pattern", "minLength", "maxLength",
					 "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems",
					 "maxItems", "uniqueItems", "additionalProperties", "nullable", "default",
					 "example", "$ref", "title", NULL};
	if (!n || n->type != YAML_MAPPING_NODE)
		return;
	for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
		const char *k = yval(d, p, 1);
		int ok = 0;
		for (const char *const *w = kw; *w && k; w++)
			ok |= !strcmp(*w, k);
		cr_expect(ok, "openapi.yaml %s: '%s' is not a schema keyword", where, k ? k : "(non-scalar)");
		yaml_node_t *v = yaml_document_get_node(d, p->value);
		if (!k || !v)
			continue;
		if (!strcmp(k, "properties") && v->type == YAML_MAPPING_NODE) {
			for (yaml_node_pair_t *q = v->data.mapping.pairs.start; q < v->data.mapping.pairs.top; q++)
				schema_keys_ok(d, yaml_document_get_node(d, q->value), where);
		} else if (!strcmp(k, "items") || !strcmp(k, "additionalProperties") || !strcmp(k, "not")) {
			schema_keys_ok(d, v, where);
		} else if ((!strcmp(k, "oneOf") || !strcmp(k, "anyOf") || !strcmp(k, "allOf")) &&
			   v->type == YAML_SEQUENCE_NODE) {
			for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++)
				schema_keys_ok(d, yaml_document_get_node(d, *it), where);
		}
	}
}

/* Checks every "schema:" value under n. */
static void schemas_under(yaml_document_t *d, yaml_node_t *n, const char *where)
{
	if (!n)
		return;
	if (n->type == YAML_SEQUENCE_NODE)
		for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++)
			schemas_under(d, yaml_document_get_node(d, *it), where);
	if (n->type != YAML_MAPPING_NODE)
		return;
	for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
		const char *k = yval(d, p, 1);
		yaml_node_t *v = yaml_document_get_node(d, p->value);
		if (k && !strcmp(k, "schema"))
			schema_keys_ok(d, v, where);
		else
			schemas_under(d, v, k ? k : where);
	}
}

/* The spec says what the daemon does: schemas are well-formed, each
 * operation's security matches the route's auth class (token routes:
 * bearer only; read routes: the empty requirement too, as they are open
 * without auth_read; probes: none), and every route that can answer 401
 * lists it. */
Test(units, openapi_matches_the_daemon)
{
	yaml_document_t d;
	openapi_load(&d);
	yaml_node_t *root = yaml_document_get_root_node(&d);
	yaml_node_t *schemas = ynode(&d, root, "components.schemas");
	cr_assert(schemas && schemas->type == YAML_MAPPING_NODE);
	for (yaml_node_pair_t *pp = schemas->data.mapping.pairs.start; pp < schemas->data.mapping.pairs.top; pp++)
		schema_keys_ok(&d, yaml_document_get_node(&d, pp->value), yval(&d, pp, 1));
	schemas_under(&d, ynode(&d, root, "paths"), "paths");
	yaml_node_t *global = ynode(&d, root, "security");
	for (size_t r = 0; r < cal_n_routes; r++) {
		char key[128], m[16];
		size_t i = 0;
		for (; cal_routes[r].method[i] && i < 15; i++)
			m[i] = (char)(cal_routes[r].method[i] + 32);
		m[i] = '\0';
		/* tab-separated: a route may contain a dot (report.html) */
		snprintf(key, sizeof(key), "paths\t%s\t%s", cal_routes[r].pattern, m);
		yaml_node_t *op = ynode_sep(&d, root, key, "\t");
		cr_assert(op, "openapi.yaml lacks %s", key);
		yaml_node_t *sec = ynode(&d, op, "security");
		if (!sec)
			sec = global;
		cr_assert(sec && sec->type == YAML_SEQUENCE_NODE, "%s: security", key);
		int anonymous = 0, bearer = 0;
		for (yaml_node_item_t *it = sec->data.sequence.items.start; it < sec->data.sequence.items.top; it++) {
			yaml_node_t *req = yaml_document_get_node(&d, *it);
			if (req->type == YAML_MAPPING_NODE && req->data.mapping.pairs.start == req->data.mapping.pairs.top)
				anonymous = 1;
			else if (ynode(&d, req, "bearer"))
				bearer = 1;
		}
		unsigned fl = cal_routes[r].flags;
		const char *want = (fl & CAL_ROUTE_PUBLIC) ? "no security" :
				   (fl & CAL_ROUTE_TOKEN) ? "bearer only" : "bearer or anonymous";
		int ok = (fl & CAL_ROUTE_PUBLIC) ? !anonymous && !bearer :
			 (fl & CAL_ROUTE_TOKEN) ? bearer && !anonymous : bearer && anonymous;
		cr_expect(ok, "%s: security should be %s", key, want);
		snprintf(key + strlen(key), sizeof(key) - strlen(key), "\tresponses\t401");
		if (!(fl & CAL_ROUTE_PUBLIC))
			cr_expect(ynode_sep(&d, root, key, "\t"), "openapi.yaml lacks %s", key);
	}
	yaml_document_delete(&d);
}

struct kdoc {
	yaml_document_t d;
	yaml_node_t *root;
	const char *kind, *name;
};

static size_t load_docs(const char *file, struct kdoc *out, size_t max)
{
	FILE *f = fopen(file, "rb");
	cr_assert(f, "%s", file);
	yaml_parser_t p;
	yaml_parser_initialize(&p);
	yaml_parser_set_input_file(&p, f);
	size_t n = 0;
	while (n < max) {
		cr_assert(yaml_parser_load(&p, &out[n].d), "%s: %s", file, p.problem);
		out[n].root = yaml_document_get_root_node(&out[n].d);
		if (!out[n].root) {
			yaml_document_delete(&out[n].d);
			break;
		}
		out[n].kind = yscalar(&out[n].d, out[n].root, "kind");
		out[n].name = yscalar(&out[n].d, out[n].root, "metadata.name");
		n++;
	}
	yaml_parser_delete(&p);
	fclose(f);
	return n;
}

/* Loads every document of the resources a kustomization lists (dir
 * relative to the source tree); returns how many. */
static size_t load_kustomization(const char *dir, struct kdoc *docs, size_t max)
{
	char base[512], file[800];
	snprintf(base, sizeof(base), "%s/deploy/k8s/%s", srcdir(), dir);
	snprintf(file, sizeof(file), "%s/kustomization.yaml", base);
	struct kdoc k;
	cr_assert_eq(load_docs(file, &k, 1), 1);
	yaml_node_t *res = ynode(&k.d, k.root, "resources");
	cr_assert(res && res->type == YAML_SEQUENCE_NODE, "%s: no resources", file);
	size_t n = 0;
	for (yaml_node_item_t *it = res->data.sequence.items.start; it < res->data.sequence.items.top; it++) {
		const char *r = (const char *)yaml_document_get_node(&k.d, *it)->data.scalar.value;
		snprintf(file, sizeof(file), "%s/%s", base, r);
		cr_assert(access(file, R_OK) == 0, "%s lists %s, which is missing", dir, r);
		n += load_docs(file, docs + n, max - n);
	}
	yaml_document_delete(&k.d);
	return n;
}

static void free_docs(struct kdoc *docs, size_t n)
{
	for (size_t i = 0; i < n; i++)
		yaml_document_delete(&docs[i].d);
}

/* 1 when the pod spec at `spec` tolerates the nvidia.com/gpu taint. */
static int tolerates_gpu(yaml_document_t *d, yaml_node_t *r, const char *spec)
{
	char q[160];
	for (int i = 0; i < 8; i++) {
		snprintf(q, sizeof(q), "%s.tolerations.%d.key", spec, i);
		const char *k = yscalar(d, r, q);
		if (k && !strcmp(k, "nvidia.com/gpu"))
			return 1;
	}
	return 0;
}

/* 1 when a volumeMount of the pod's first container holds path. */
static int mounted(yaml_document_t *d, yaml_node_t *r, const char *spec, const char *path)
{
	char q[160];
	for (int i = 0; i < 32; i++) {
		snprintf(q, sizeof(q), "%s.containers.0.volumeMounts.%d.mountPath", spec, i);
		const char *m = yscalar(d, r, q);
		if (!m)
			return 0;
		size_t n = strlen(m);
		if (!strncmp(path, m, n) && (path[n] == '\0' || path[n] == '/'))
			return 1;
	}
	return 0;
}

/* 1 when recipes/NAME.yaml exists. */
static int recipe_exists(const char *name)
{
	char f[512];
	snprintf(f, sizeof(f), "%s/recipes/%s.yaml", srcdir(), name);
	return access(f, R_OK) == 0;
}

/* Every root the daemon's configuration names is mounted in its pod. */
static void check_config_roots(const char *conf, yaml_document_t *dep, yaml_node_t *dr)
{
	yaml_parser_t p;
	yaml_document_t c;
	yaml_parser_initialize(&p);
	yaml_parser_set_input_string(&p, (const unsigned char *)conf, strlen(conf));
	cr_assert(yaml_parser_load(&p, &c), "calibd.yaml of the ConfigMap: %s", p.problem);
	yaml_node_t *root = yaml_document_get_root_node(&c);
	static const char *const lists[] = {"model_roots", "data_roots", "output_roots"};
	int nroots = 0;
	for (size_t l = 0; l < sizeof(lists) / sizeof(*lists); l++) {
		yaml_node_t *seq = ynode(&c, root, lists[l]);
		cr_assert(seq && seq->type == YAML_SEQUENCE_NODE, "config lacks %s", lists[l]);
		for (yaml_node_item_t *it = seq->data.sequence.items.start; it < seq->data.sequence.items.top; it++) {
			const char *v = (const char *)yaml_document_get_node(&c, *it)->data.scalar.value;
			cr_expect(mounted(dep, dr, "spec.template.spec", v), "%s names %s, which no volume mounts",
				  lists[l], v);
			nroots++;
		}
	}
	cr_expect_geq(nroots, 3);
	static const char *const files[] = {"state_dir", "token_file"};
	for (size_t i = 0; i < sizeof(files) / sizeof(*files); i++) {
		const char *v = yscalar(&c, root, files[i]);
		cr_expect(!v || mounted(dep, dr, "spec.template.spec", v), "%s %s is not mounted", files[i], v);
	}
	yaml_node_t *ds = ynode(&c, root, "datasets");
	for (yaml_node_pair_t *q = ds ? ds->data.mapping.pairs.start : NULL; ds && q < ds->data.mapping.pairs.top; q++) {
		const char *v = (const char *)yaml_document_get_node(&c, q->value)->data.scalar.value;
		cr_expect(mounted(dep, dr, "spec.template.spec", v), "dataset %s is not mounted", v);
	}
	yaml_document_delete(&c);
	yaml_parser_delete(&p);
}

Test(units, kubernetes_manifests)
{
	struct kdoc docs[32];
	size_t n = load_kustomization("base", docs, 32);
	int have_dep = 0, pvc_models = 0, pvc_out = 0, secret = 0, svc = 0, cm = 0;
	const char *conf = NULL;
	yaml_document_t *dep = NULL;
	yaml_node_t *dr = NULL;
	for (size_t i = 0; i < n; i++) {
		yaml_document_t *d = &docs[i].d;
		yaml_node_t *r = docs[i].root;
		const char *kind = docs[i].kind;
		cr_assert(kind && yscalar(d, r, "apiVersion") && docs[i].name, "document %zu lacks kind/apiVersion/name", i);
		if (!strcmp(kind, "Deployment")) {
			have_dep = 1;
			dep = d;
			dr = r;
			cr_expect_str_eq(yscalar(d, r, "spec.strategy.type"), "Recreate");
			cr_expect_str_eq(yscalar(d, r, "spec.replicas"), "1");
			const char *c0 = "spec.template.spec.containers.0";
			char q[128];
			snprintf(q, sizeof(q), "%s.livenessProbe.httpGet.path", c0);
			cr_expect_str_eq(yscalar(d, r, q), "/livez", "liveness checks the supervisor only");
			snprintf(q, sizeof(q), "%s.readinessProbe.httpGet.path", c0);
			cr_expect_str_eq(yscalar(d, r, q), "/readyz");
			snprintf(q, sizeof(q), "%s.startupProbe.httpGet.path", c0);
			cr_expect(yscalar(d, r, q), "startup probe");
			snprintf(q, sizeof(q), "%s.resources.limits", c0);
			yaml_node_t *lim = ynode(d, r, q);
			int gpu = 0;
			for (yaml_node_pair_t *p = lim ? lim->data.mapping.pairs.start : NULL; lim && p < lim->data.mapping.pairs.top; p++)
				gpu |= !strcmp((char *)yaml_document_get_node(d, p->key)->data.scalar.value, "nvidia.com/gpu");
			cr_expect(gpu, "GPU limit");
			cr_expect(tolerates_gpu(d, r, "spec.template.spec"), "the Deployment does not tolerate nvidia.com/gpu");
		} else if (!strcmp(kind, "Job")) {
			/* applied with the daemon, a Job would share its ReadWriteOnce volume */
			cr_expect_fail("the base holds Job %s: Jobs belong in overlays", docs[i].name);
		} else if (!strcmp(kind, "PersistentVolumeClaim")) {
			pvc_models |= !strcmp(docs[i].name, "calibd-models");
			pvc_out |= !strcmp(docs[i].name, "calibd-outputs");
		} else if (!strcmp(kind, "Secret")) {
			secret = 1;
		} else if (!strcmp(kind, "Service")) {
			svc = 1;
		} else if (!strcmp(kind, "ConfigMap")) {
			cm = 1;
			/* the key holds a '.', which ynode() reads as a step */
			yaml_node_t *data = ynode(d, r, "data");
			for (yaml_node_pair_t *p = data ? data->data.mapping.pairs.start : NULL;
			     data && p < data->data.mapping.pairs.top; p++)
				if (!strcmp((char *)yaml_document_get_node(d, p->key)->data.scalar.value, "calibd.yaml"))
					conf = (const char *)yaml_document_get_node(d, p->value)->data.scalar.value;
		}
	}
	cr_expect(have_dep && pvc_models && pvc_out && secret && svc && cm,
		  "dep %d pvc %d/%d secret %d svc %d cm %d", have_dep, pvc_models, pvc_out, secret, svc, cm);
	cr_assert(conf && dep, "the base has no calibd.yaml ConfigMap or no Deployment");
	check_config_roots(conf, dep, dr);
	free_docs(docs, n);
}

/* The `calibd quantize` arguments of a Job's first container: one
 * --recipe that recipes/ has, and every path (--model, --calib, --out,
 * --rendezvous) on a mounted volume.  Returns the value of --nodes= (0
 * without). */
static long check_quantize_args(yaml_document_t *d, yaml_node_t *r, const char *what)
{
	int recipes = 0;
	long nodes = 0;
	char q[96];
	cr_expect_str_eq(yscalar(d, r, "spec.template.spec.containers.0.args.0"), "quantize", "%s", what);
	for (int i = 1; i < 24; i++) {
		snprintf(q, sizeof(q), "spec.template.spec.containers.0.args.%d", i);
		const char *a = yscalar(d, r, q);
		if (a && !strncmp(a, "--recipe=", 9)) {
			cr_expect(recipe_exists(a + 9), "%s names recipe '%s', which recipes/ lacks", what, a + 9);
			recipes++;
		}
		if (a && (!strncmp(a, "--model=", 8) || !strncmp(a, "--calib=", 8) || !strncmp(a, "--out=", 6) ||
			  !strncmp(a, "--rendezvous=", 13))) {
			const char *v = strchr(a, '=') + 1;
			cr_expect(mounted(d, r, "spec.template.spec", v), "%s: %s is not mounted", what, a);
		}
		if (a && !strncmp(a, "--nodes=", 8))
			nodes = atol(a + 8);
	}
	cr_expect_eq(recipes, 1, "%s passes no --recipe", what);
	return nodes;
}

/* The Jobs of the overlays: one that runs `calibd quantize` on a GPU with
 * a recipe that exists, one that submits to the daemon and waits. */
Test(units, kubernetes_overlays)
{
	struct kdoc docs[8];
	size_t n = load_kustomization("overlays/quantize-job", docs, 8);
	cr_assert_eq(n, 1);
	yaml_document_t *d = &docs[0].d;
	yaml_node_t *r = docs[0].root;
	cr_assert_str_eq(docs[0].kind, "Job");
	cr_expect_str_eq(yscalar(d, r, "spec.template.spec.restartPolicy"), "Never");
	cr_expect(yscalar(d, r, "spec.ttlSecondsAfterFinished"), "quantize Job without ttlSecondsAfterFinished");
	cr_expect(tolerates_gpu(d, r, "spec.template.spec"), "the quantize Job does not tolerate nvidia.com/gpu");
	check_quantize_args(d, r, "the quantize Job");
	free_docs(docs, n);
	char q[96];

	n = load_kustomization("overlays/submit-job", docs, 8);
	cr_assert_eq(n, 1);
	d = &docs[0].d;
	r = docs[0].root;
	cr_assert_str_eq(docs[0].kind, "Job");
	cr_expect_str_eq(yscalar(d, r, "spec.template.spec.containers.0.args.0"), "submit");
	cr_expect(yscalar(d, r, "spec.ttlSecondsAfterFinished"), "submit Job without ttlSecondsAfterFinished");
	int wait = 0;
	for (int i = 1; i < 16; i++) {
		snprintf(q, sizeof(q), "spec.template.spec.containers.0.args.%d", i);
		const char *a = yscalar(d, r, q);
		wait |= a && !strcmp(a, "--wait");
	}
	cr_expect(wait, "the submit Job does not wait for the job");
	free_docs(docs, n);
	char spec[512];
	snprintf(spec, sizeof(spec), "%s/deploy/k8s/overlays/submit-job/spec.json", srcdir());
	json_t *j = json_load_file(spec, 0, NULL);
	cr_assert(j, "%s is not JSON", spec);
	const char *rn = json_string_value(json_object_get(j, "recipe"));
	cr_expect(rn && recipe_exists(rn), "spec.json names recipe '%s', which recipes/ lacks", rn ? rn : "");
	json_decref(j);
}

/* The multi-node form: an indexed Job of one pod per node (required
 * anti-affinity on the host name), as many completions as --nodes, the
 * completion index as --node-rank, the rendezvous file on the volume every
 * node shares, and a headless Service named as the pods' subdomain. */
Test(units, kubernetes_multinode)
{
	struct kdoc docs[8];
	size_t n = load_kustomization("overlays/multinode", docs, 8);
	yaml_document_t *jd = NULL, *sd = NULL;
	yaml_node_t *jr = NULL, *sr = NULL;
	const char *name = NULL;
	for (size_t i = 0; i < n; i++) {
		if (!strcmp(docs[i].kind, "Job")) {
			name = docs[i].name;
			jd = &docs[i].d;
			jr = docs[i].root;
		} else if (!strcmp(docs[i].kind, "Service")) {
			sd = &docs[i].d;
			sr = docs[i].root;
		}
	}
	cr_assert(jd && sd, "overlays/multinode needs a Job and a Service");
	const char *ps = "spec.template.spec";
	cr_expect_str_eq(yscalar(jd, jr, "spec.completionMode"), "Indexed");
	cr_expect_str_eq(yscalar(jd, jr, "spec.template.spec.restartPolicy"), "Never");
	cr_expect(tolerates_gpu(jd, jr, ps), "the multinode Job does not tolerate nvidia.com/gpu");
	long nodes = check_quantize_args(jd, jr, "the multinode Job");
	cr_expect_geq(nodes, 2, "the multinode Job passes no --nodes");
	const char *c = yscalar(jd, jr, "spec.completions"), *p = yscalar(jd, jr, "spec.parallelism");
	cr_expect(c && atol(c) == nodes && p && atol(p) == nodes, "completions %s, parallelism %s, --nodes %ld",
		  c ? c : "-", p ? p : "-", nodes);
	const char *topo = yscalar(jd, jr, "spec.template.spec.affinity.podAntiAffinity."
				   "requiredDuringSchedulingIgnoredDuringExecution.0.topologyKey");
	cr_expect(topo && !strcmp(topo, "kubernetes.io/hostname"), "no required anti-affinity per node");
	const char *sel = yscalar(jd, jr, "spec.template.spec.affinity.podAntiAffinity."
				  "requiredDuringSchedulingIgnoredDuringExecution.0.labelSelector.matchLabels.job-name");
	cr_expect(sel && !strcmp(sel, name), "the anti-affinity does not select the Job's pods");
	/* --node-rank from the completion index, through an env variable */
	int rank = 0, env = 0;
	char q[160];
	for (int i = 1; i < 24; i++) {
		snprintf(q, sizeof(q), "spec.template.spec.containers.0.args.%d", i);
		const char *a = yscalar(jd, jr, q);
		rank |= a && !strcmp(a, "--node-rank=$(NODE_RANK)");
	}
	for (int i = 0; i < 8; i++) {
		snprintf(q, sizeof(q), "spec.template.spec.containers.0.env.%d.name", i);
		const char *e = yscalar(jd, jr, q);
		if (e && !strcmp(e, "NODE_RANK")) {
			snprintf(q, sizeof(q), "spec.template.spec.containers.0.env.%d.valueFrom.fieldRef.fieldPath", i);
			const char *f = yscalar(jd, jr, q);
			env = f && strstr(f, "batch.kubernetes.io/job-completion-index") != NULL;
		}
	}
	cr_expect(rank && env, "--node-rank is not the Job's completion index");
	cr_expect_str_eq(yscalar(sd, sr, "spec.clusterIP"), "None", "the Service is not headless");
	cr_expect_str_eq(yscalar(jd, jr, "spec.template.spec.subdomain"), yscalar(sd, sr, "metadata.name"));
	cr_expect_str_eq(yscalar(sd, sr, "spec.selector.job-name"), name);
	free_docs(docs, n);
}

/* Paths of a unit's ReadOnlyPaths=/ReadWritePaths=/... lines that a fresh
 * host lacks fail the start (226/NAMESPACE): each is optional ('-') or
 * created by calibd.tmpfiles. */
static void check_unit_paths(const char *unit, const char *tmpfiles)
{
	static const char *const keys[] = {"ReadOnlyPaths=", "ReadWritePaths=", "InaccessiblePaths=", "ExecPaths="};
	for (const char *line = unit; *line; line += strcspn(line, "\n") + (line[strcspn(line, "\n")] != 0)) {
		for (size_t k = 0; k < sizeof(keys) / sizeof(*keys); k++) {
			size_t kl = strlen(keys[k]);
			if (strncmp(line, keys[k], kl))
				continue;
			char buf[1024];
			snprintf(buf, sizeof(buf), "%.*s", (int)strcspn(line + kl, "\n"), line + kl);
			for (char *save = NULL, *w = strtok_r(buf, " \t", &save); w; w = strtok_r(NULL, " \t", &save)) {
				if (w[0] == '-' || (w[0] == '+' && w[1] == '-'))
					continue;
				char want[600];
				snprintf(want, sizeof(want), "\nd %s ", w);
				cr_expect(strstr(tmpfiles, want), "%s%s is neither optional ('-') nor created by tmpfiles", keys[k], w);
			}
		}
	}
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	cr_assert(f, "%s", path);
	char *text = calloc(1, 16384);
	cr_assert(text);
	text[0] = '\n';
	size_t n = fread(text + 1, 1, 16384 - 2, f);
	text[n + 1] = '\0';
	fclose(f);
	return text;
}

Test(units, systemd_unit)
{
	char unit[512], tmpf[512];
	snprintf(unit, sizeof(unit), "%s/systemd/calibd.service", srcdir());
	snprintf(tmpf, sizeof(tmpf), "%s/systemd/calibd.tmpfiles", srcdir());
	char *text = slurp(unit), *tmpfiles = slurp(tmpf);
	cr_expect(strstr(text, "Type=notify"));
	cr_expect(strstr(text, "WatchdogSec="));
	cr_expect(strstr(text, "ExecReload=") && strstr(text, "--check"));
	cr_expect(strstr(text, "DeviceAllow="));
	cr_expect(!strstr(text, "PrivateDevices=yes"), "PrivateDevices hides the GPUs");
	check_unit_paths(text, tmpfiles);
	free(text);
	free(tmpfiles);
	if (access("/usr/bin/systemd-analyze", X_OK) != 0 && access("/bin/systemd-analyze", X_OK) != 0) {
		cr_skip_test("systemd-analyze not installed: unit not verified");
	}
	char dir[] = "/tmp/calibd-unit-XXXXXX";
	cr_assert(mkdtemp(dir));
	char cmd[2048];
	snprintf(cmd, sizeof(cmd),
		 "sed 's#/usr/bin/calibd#%s#g' '%s' > %s/calibd.service && systemd-analyze verify %s/calibd.service 2>&1; "
		 "r=$?; rm -rf %s; exit $r", getenv("CALIBD"), unit, dir, dir, dir);
	int st = system(cmd);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "systemd-analyze verify failed");
	/* the hardening: exposure 5.5 before CapabilityBoundingSet=,
	 * SystemCallFilter=, PrivateUsers=, ProtectProc=..., 1.6 after */
	cr_assert(mkdtemp(strcpy(dir, "/tmp/calibd-unit-XXXXXX")));
	snprintf(cmd, sizeof(cmd),
		 "sed 's#/usr/bin/calibd#%s#g' '%s' > %s/calibd.service && "
		 "systemd-analyze security --offline=true --threshold=25 %s/calibd.service >%s/out 2>&1; "
		 "r=$?; grep -a 'Overall exposure' %s/out; rm -rf %s; exit $r",
		 getenv("CALIBD"), unit, dir, dir, dir, dir, dir);
	st = system(cmd);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "systemd-analyze security: exposure above 2.5");
}

/* The image: a health check, a release build that is not -Werror (CI
 * builds release with -Werror instead), meson >= 1.0 (PyPI: the base
 * image's is older), and a .dockerignore that keeps .git and build trees
 * out of the context.  No Docker engine here: the build itself is not run. */
Test(units, dockerfile)
{
	char p[512];
	snprintf(p, sizeof(p), "%s/deploy/Dockerfile", srcdir());
	char *df = slurp(p);
	cr_expect(strstr(df, "\nHEALTHCHECK "), "the Dockerfile has no HEALTHCHECK");
	cr_expect(strstr(df, "-Dbuildtype=release") && !strstr(df, "werror=true"));
	cr_expect(strstr(df, "\"meson==") || strstr(df, "ubuntu24.04"), "the image's meson must be >= 1.0");
	free(df);
	snprintf(p, sizeof(p), "%s/.dockerignore", srcdir());
	char *ign = slurp(p);
	cr_expect(strstr(ign, "\n.git\n") && strstr(ign, "\nbuild/\n"), ".dockerignore lacks .git or build/");
	free(ign);
}

