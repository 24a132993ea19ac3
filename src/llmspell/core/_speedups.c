/*
 * llmspell.core._speedups: the few per-event steps that CPython cannot make cheap.
 *
 * Every event built (every publish, every hook event, every run record) pays for a new id,
 * a JSON-safety walk of its data and a __post_init__ call. In pure Python those three cost
 * more than the rest of a publish together (about 1.1 us of 1.7 us on the reference
 * machine), and the interpreter's per-bytecode cost is the floor: no rewrite in Python gets
 * under it (see docs/architecture.md, "Native speedups"). This module does exactly what the
 * pure-Python versions in llmspell.core.ids, llmspell.core.values and llmspell.events.event
 * do, with the same results; tests compare the two on generated values. It is optional:
 * when it is not built, or LLMSPELL_PURE_PYTHON=1 is set, the Python versions run.
 *
 * Nothing here calls back into Python code except the event's own fallback (for data that
 * is not plain JSON, which the Python walk explains or normalises), so the GIL makes each
 * function atomic: the id counter needs no lock.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_DEPTH 64
#define PREFIX_LENGTH 24
#define COUNTER_DIGITS 12
#define ID_LENGTH (PREFIX_LENGTH + 1 + COUNTER_DIGITS)

typedef struct {
    PyObject *min_int;   /* -(2**1024 - 1) */
    PyObject *max_int;   /* 2**1024 - 1 */
    PyObject *data_name; /* "data", interned */
    char prefix[PREFIX_LENGTH];
    uint64_t counter;
    int seeded;
} module_state;

static module_state *
state_of(PyObject *module)
{
    return (module_state *)PyModule_GetState(module);
}

/* 1 when an exact int lies within MIN_INT..MAX_INT, else 0 (errors count as "not plain":
 * the Python walk then decides, and says why). */
static int
int_in_range(module_state *st, PyObject *value)
{
    int overflow = 0;
    (void)PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow == 0) {
        if (PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        return 1;
    }
    int low = PyObject_RichCompareBool(st->min_int, value, Py_LE);
    int high = low == 1 ? PyObject_RichCompareBool(value, st->max_int, Py_LE) : low;
    if (low < 0 || high < 0) {
        PyErr_Clear();
        return 0;
    }
    return low && high;
}

static int plain_json(module_state *st, PyObject *value, int depth);

/* A container's item: the scalar cases inline, containers one level deeper. */
static inline int
plain_item(module_state *st, PyObject *item, int depth)
{
    PyTypeObject *kind = Py_TYPE(item);
    if (kind == &PyUnicode_Type || kind == &PyBool_Type || item == Py_None) {
        return 1;
    }
    if (kind == &PyLong_Type) {
        return int_in_range(st, item);
    }
    if (kind == &PyFloat_Type) {
        return isfinite(PyFloat_AS_DOUBLE(item)) ? 1 : 0;
    }
    return plain_json(st, item, depth + 1);
}

static int
plain_json(module_state *st, PyObject *value, int depth)
{
    PyTypeObject *kind = Py_TYPE(value);
    if (kind == &PyDict_Type) {
        if (depth >= MAX_DEPTH) {
            return 0;
        }
        Py_ssize_t position = 0;
        PyObject *key;
        PyObject *item;
        while (PyDict_Next(value, &position, &key, &item)) {
            if (!PyUnicode_CheckExact(key)) {
                return 0;
            }
            /* Borrowed references: nothing below runs Python code that could change the
             * dict (exact ints and floats compare in C). */
            if (!plain_item(st, item, depth)) {
                return 0;
            }
        }
        return 1;
    }
    if (kind == &PyUnicode_Type || kind == &PyBool_Type || value == Py_None) {
        return 1;
    }
    if (kind == &PyLong_Type) {
        return int_in_range(st, value);
    }
    if (kind == &PyFloat_Type) {
        return isfinite(PyFloat_AS_DOUBLE(value)) ? 1 : 0;
    }
    if (kind == &PyList_Type) {
        if (depth >= MAX_DEPTH) {
            return 0;
        }
        /* A list's length is read each step: the walk never reads past its end. */
        for (Py_ssize_t index = 0; index < PyList_GET_SIZE(value); index++) {
            if (!plain_item(st, PyList_GET_ITEM(value, index), depth)) {
                return 0;
            }
        }
        return 1;
    }
    return 0;
}

PyDoc_STRVAR(is_plain_json_safe_doc,
"is_plain_json_safe(value, depth=0)\n--\n\n"
"True when value is JSON-safe with plain types only (as llmspell.core.values).");

static PyObject *
is_plain_json_safe(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError,
                        "is_plain_json_safe() takes a value and an optional depth");
        return NULL;
    }
    long depth = 0;
    if (nargs == 2) {
        depth = PyLong_AsLong(args[1]);
        if (depth == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (depth < 0) {
            depth = 0;
        }
        if (depth > MAX_DEPTH) {
            depth = MAX_DEPTH;
        }
    }
    return PyBool_FromLong(plain_json(state_of(module), args[0], (int)depth));
}

PyDoc_STRVAR(seed_ids_doc,
"seed_ids(prefix)\n--\n\n"
"Start a new id sequence: prefix is 24 lowercase hex characters; the counter restarts at 0.");

static PyObject *
seed_ids(PyObject *module, PyObject *prefix)
{
    Py_ssize_t length;
    const char *text;
    if (!PyUnicode_Check(prefix) || (text = PyUnicode_AsUTF8AndSize(prefix, &length)) == NULL
        || length != PREFIX_LENGTH) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "seed_ids() takes 24 hex characters");
        return NULL;
    }
    for (Py_ssize_t index = 0; index < length; index++) {
        char c = text[index];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
            PyErr_SetString(PyExc_ValueError, "seed_ids() takes 24 lowercase hex characters");
            return NULL;
        }
    }
    module_state *st = state_of(module);
    memcpy(st->prefix, text, PREFIX_LENGTH);
    st->counter = 0;
    st->seeded = 1;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(new_id_doc,
"new_id()\n--\n\n"
"A new id: '<24 hex prefix>-<12 hex counter>' (as llmspell.core.ids.new_id).");

static PyObject *
new_id(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    static const char digits[] = "0123456789abcdef";
    module_state *st = state_of(module);
    if (!st->seeded) {
        PyErr_SetString(PyExc_RuntimeError, "new_id() before seed_ids()");
        return NULL;
    }
    uint64_t count = st->counter++;
    PyObject *id = PyUnicode_New(ID_LENGTH, 127);
    if (id == NULL) {
        return NULL;
    }
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(id);
    memcpy(out, st->prefix, PREFIX_LENGTH);
    out[PREFIX_LENGTH] = '-';
    for (int index = ID_LENGTH - 1; index > PREFIX_LENGTH; index--) {
        out[index] = (Py_UCS1)digits[count & 0xF];
        count >>= 4;
    }
    return id;
}

/* The event's __post_init__. Its "self" is a (module, fallback) tuple: the fallback is
 * the Python code that runs only for data that is not plain JSON (to normalise subclasses
 * or to raise the precise error). */
static PyObject *
event_post_init(PyObject *bound, PyObject *event)
{
    module_state *st = state_of(PyTuple_GET_ITEM(bound, 0));
    PyObject *data = PyObject_GetAttr(event, st->data_name);
    if (data == NULL) {
        return NULL;
    }
    int plain = plain_json(st, data, 0);
    Py_DECREF(data);
    if (plain) {
        Py_RETURN_NONE;
    }
    return PyObject_CallOneArg(PyTuple_GET_ITEM(bound, 1), event);
}

static PyMethodDef event_post_init_def = {
    "__post_init__", (PyCFunction)event_post_init, METH_O,
    "Check that the event's data is plain JSON; otherwise run the Python fallback."};

PyDoc_STRVAR(event_post_init_doc,
"event_post_init(fallback)\n--\n\n"
"An event __post_init__ that checks plain JSON data in C and calls fallback(event)\n"
"for anything else.");

static PyObject *
make_event_post_init(PyObject *module, PyObject *fallback)
{
    if (!PyCallable_Check(fallback)) {
        PyErr_SetString(PyExc_TypeError, "event_post_init() takes a callable");
        return NULL;
    }
    PyObject *bound = PyTuple_Pack(2, module, fallback);
    if (bound == NULL) {
        return NULL;
    }
    PyObject *function = PyCFunction_NewEx(&event_post_init_def, bound, NULL);
    Py_DECREF(bound);
    return function;
}

static PyMethodDef speedups_methods[] = {
    {"is_plain_json_safe", (PyCFunction)(void (*)(void))is_plain_json_safe, METH_FASTCALL,
     is_plain_json_safe_doc},
    {"seed_ids", (PyCFunction)seed_ids, METH_O, seed_ids_doc},
    {"new_id", (PyCFunction)new_id, METH_NOARGS, new_id_doc},
    {"event_post_init", (PyCFunction)make_event_post_init, METH_O, event_post_init_doc},
    {NULL, NULL, 0, NULL},
};

static int
speedups_exec(PyObject *module)
{
    module_state *st = state_of(module);
    PyObject *one = PyLong_FromLong(1);
    PyObject *bits = PyLong_FromLong(1024);
    PyObject *power = (one && bits) ? PyNumber_Lshift(one, bits) : NULL;
    st->max_int = power ? PyNumber_Subtract(power, one) : NULL;
    st->min_int = st->max_int ? PyNumber_Negative(st->max_int) : NULL;
    Py_XDECREF(power);
    Py_XDECREF(bits);
    Py_XDECREF(one);
    st->data_name = PyUnicode_InternFromString("data");
    st->counter = 0;
    st->seeded = 0;
    if (st->max_int == NULL || st->min_int == NULL || st->data_name == NULL) {
        return -1;
    }
    return 0;
}

static int
speedups_traverse(PyObject *module, visitproc visit, void *arg)
{
    module_state *st = state_of(module);
    Py_VISIT(st->min_int);
    Py_VISIT(st->max_int);
    Py_VISIT(st->data_name);
    return 0;
}

static int
speedups_clear(PyObject *module)
{
    module_state *st = state_of(module);
    Py_CLEAR(st->min_int);
    Py_CLEAR(st->max_int);
    Py_CLEAR(st->data_name);
    return 0;
}

static void
speedups_free(void *module)
{
    speedups_clear((PyObject *)module);
}

static PyModuleDef_Slot speedups_slots[] = {
    {Py_mod_exec, speedups_exec},
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    "llmspell.core._speedups",
    "Native versions of llmspell's per-event steps (ids, the JSON-safety check).",
    sizeof(module_state),
    speedups_methods,
    speedups_slots,
    speedups_traverse,
    speedups_clear,
    speedups_free,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
