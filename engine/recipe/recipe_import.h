/*
 * recipe_import.h — what the two halves of the recipe loader share
 * (internal to engine/recipe; not part of the engine's interface).
 * recipe_import.c finds recipe files, keeps them confined and resolves
 * `imports:` / `$import` into one located YAML tree (ytree.h);
 * recipe_load.c validates that tree into struct cal_recipe (recipe.h).
 *
 * Both files call these functions by their short names; the aliases below
 * give the linker the cal_recipe_ names.  None takes ownership of its
 * arguments; what each returns is described at its definition.
 */
#ifndef CAL_RECIPE_IMPORT_H
#define CAL_RECIPE_IMPORT_H

#include "engine/recipe/recipe.h"
#include "engine/recipe/ytree.h"

/* What a tree (or a place in it) is, for typed $import in lists. */
enum ytype {
	YT_OTHER,
	YT_RECIPE,     /* a recipe file: metadata + quantize */
	YT_QCONFIG,    /* QuantizeConfig */
	YT_CFG_LIST,   /* QuantizerCfgListConfig = list[QuantizerCfgEntry] */
	YT_CFG_ENTRY,  /* QuantizerCfgEntry */
	YT_CFG,        /* an entry's cfg: attribute mapping or a list of them */
	YT_ATTR,       /* QuantizerAttributeConfig */
};

/* A loaded file kept alive for the nodes that point at its name. */
struct lfile {
	char *path;
	struct lfile *next;
};

struct loader {
	const char *builtin;
	int no_fs;
	char *builtin_real;  /* no_fs: realpath of builtin, computed on first use */
	size_t nodes_left;
	int files_read;
	const char *stack[CAL_RECIPE_MAX_IMPORT_DEPTH + 2]; /* realpaths being loaded */
	int depth;
	struct lfile *files;
	struct cal_error *err;
};

/* An import table: local name -> resolved snippet. */
struct imp {
	char *name;
	struct cal_ynode *val;
	enum ytype type;
	char *path;
};

struct imptab {
	struct imp *v;
	size_t n;
};

#define at_err cal_recipe_at_err
#define cat3 cal_recipe_cat3
#define drop_imports cal_recipe_drop_imports
#define files_free cal_recipe_files_free
#define has_yaml_suffix cal_recipe_has_yaml_suffix
#define imptab_clear cal_recipe_imptab_clear
#define intern_file cal_recipe_intern_file
#define is_dir cal_recipe_is_dir
#define is_file cal_recipe_is_file
#define load_imports cal_recipe_load_imports
#define load_tree cal_recipe_load_tree
#define nomem cal_recipe_nomem
#define rel_path_inside cal_recipe_rel_path_inside
#define resolve cal_recipe_resolve

__attribute__((format(printf, 4, 5))) enum cal_status
at_err(struct cal_error *err, enum cal_status st, const struct cal_ynode *n, const char *fmt, ...);
char *cat3(const char *a, const char *b, const char *c);
void drop_imports(struct cal_ynode *data);
void files_free(struct lfile *f);
int has_yaml_suffix(const char *p);
void imptab_clear(struct imptab *t);
const char *intern_file(struct loader *L, const char *path);
int is_dir(const char *p);
int is_file(const char *p);
enum cal_status load_imports(struct loader *L, const struct cal_ynode *imports,
			     struct imptab *tab);
enum cal_status load_tree(struct loader *L, const char *path, enum ytype root,
			  int is_import, struct cal_ynode **ret, enum ytype *ret_type);
enum cal_status nomem(struct loader *L);
int rel_path_inside(const char *p);
enum cal_status resolve(struct loader *L, const struct cal_ynode *n, enum ytype t,
			const struct imptab *tab, struct cal_ynode **ret);

#endif
