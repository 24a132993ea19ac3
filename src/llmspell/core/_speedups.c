/*
 * llmspell.core._speedups: the few per-event steps that CPython cannot make cheap.
 *
 * Every event built (every publish, every hook event, every run record) pays for a new id,
 * a JSON-safety walk of its data and a __post_init__ call. In pure Python those three cost
 * more than the rest of a publish together (about 1.1 us of 1.7 us on the reference
 * machine), and the interpreter's per-bytecode cost is the floor: no rewrite in Python gets
 * under it (see docs/architecture.md, "Native speedups"). Every hook context pays the
 * same way for the exact-type checks of its fields (exact_post_init). This module does
 * exactly what the pure-Python versions in llmspell.core.ids, llmspell.core.values,
 * llmspell.events.event and llmspell.hooks.context do, with the same results; tests
 * compare the two on generated values. It is optional: when it is not built, or
 * LLMSPELL_PURE_PYTHON=1 is set, the Python versions run.
 *
 * Nothing here calls back into Python code except the fallbacks (for data that is not
 * plain JSON, which the Python walk explains or normalises; for a field of an unexpected
 * type, which the Python check names), so the GIL makes each function atomic: the id
 * counter needs no lock. run_hooks is the exception by its nature: it calls the hooks (and
 * the clock, and the executor's slow-call callback), and keeps no state of its own.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <limits.h>
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
    PyObject *append_name; /* "append", interned */
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

/* A __post_init__ that checks fields by exact type. Its "self" is a (spec, fallback)
 * tuple; spec is a tuple of (name, types, rule) triples. Rule EXACT_TYPE: the field's value
 * must be of one of the exact types in the tuple "types" (NoneType in it allows None);
 * EXACT_STR_MAP: that, and a dict value must map str to str (exact types); EXACT_OWN_TYPE:
 * None or a value of the object's own exact type (a struct's parent), "types" unused.
 * Anything else (a subclass, a wrong type) calls fallback(obj), the Python check that
 * decides and names the field. No Python code runs on the common path. */
enum { EXACT_TYPE = 0, EXACT_STR_MAP = 1, EXACT_OWN_TYPE = 2 };

static int
exact_field_ok(PyObject *obj, PyObject *value, PyObject *types, long rule)
{
    PyTypeObject *type = Py_TYPE(value);
    if (rule == EXACT_OWN_TYPE) {
        return value == Py_None || type == Py_TYPE(obj);
    }
    Py_ssize_t allowed = PyTuple_GET_SIZE(types);
    int ok = 0;
    for (Py_ssize_t t = 0; t < allowed; t++) {
        if ((PyObject *)type == PyTuple_GET_ITEM(types, t)) {
            ok = 1;
            break;
        }
    }
    if (ok && rule == EXACT_STR_MAP && PyDict_CheckExact(value)) {
        Py_ssize_t position = 0;
        PyObject *key, *item;
        while (PyDict_Next(value, &position, &key, &item)) {
            if (!PyUnicode_CheckExact(key) || !PyUnicode_CheckExact(item)) {
                return 0;
            }
        }
    }
    return ok;
}

/* Where each spec field lies in objects of one type (the first type checked whose fields
 * are all plain object members): read directly, with no attribute lookup per field. */
typedef struct {
    PyTypeObject *type; /* NULL until resolved; a strong reference after */
    int unusable;       /* 1: that type's fields are not all object members */
    Py_ssize_t offsets[1];
} exact_layout;

static void
exact_layout_free(PyObject *capsule)
{
    exact_layout *layout = PyCapsule_GetPointer(capsule, NULL);
    if (layout != NULL) {
        Py_XDECREF(layout->type);
        PyMem_Free(layout);
    }
}

/* Resolve the offsets of spec's fields in type (0: done or unusable; -1: error). */
static int
exact_resolve(exact_layout *layout, PyObject *spec, PyTypeObject *type)
{
    Py_ssize_t count = PyTuple_GET_SIZE(spec);
    for (Py_ssize_t index = 0; index < count; index++) {
        PyObject *name = PyTuple_GET_ITEM(PyTuple_GET_ITEM(spec, index), 0);
        PyObject *descr = PyObject_GetAttr((PyObject *)type, name);
        if (descr == NULL) {
            PyErr_Clear();
            layout->unusable = 1;
            return 0;
        }
        int member = Py_IS_TYPE(descr, &PyMemberDescr_Type)
                     && ((PyMemberDescrObject *)descr)->d_member->type == T_OBJECT_EX;
        if (member) {
            layout->offsets[index] = ((PyMemberDescrObject *)descr)->d_member->offset;
        }
        Py_DECREF(descr);
        if (!member) {
            layout->unusable = 1;
            return 0;
        }
    }
    Py_INCREF(type);
    layout->type = type;
    return 0;
}

static PyObject *
exact_post_init(PyObject *bound, PyObject *obj)
{
    PyObject *spec = PyTuple_GET_ITEM(bound, 0);
    exact_layout *layout = PyCapsule_GetPointer(PyTuple_GET_ITEM(bound, 2), NULL);
    if (layout == NULL) {
        return NULL;
    }
    PyTypeObject *type = Py_TYPE(obj);
    if (layout->type == NULL && !layout->unusable && exact_resolve(layout, spec, type) < 0) {
        return NULL;
    }
    int direct = layout->type == type;
    Py_ssize_t count = PyTuple_GET_SIZE(spec);
    for (Py_ssize_t index = 0; index < count; index++) {
        PyObject *entry = PyTuple_GET_ITEM(spec, index);
        PyObject *value;
        if (direct) {
            value = *(PyObject **)((char *)obj + layout->offsets[index]);
            if (value == NULL) { /* unset: the Python check says what is wrong */
                return PyObject_CallOneArg(PyTuple_GET_ITEM(bound, 1), obj);
            }
            Py_INCREF(value);
        }
        else if ((value = PyObject_GetAttr(obj, PyTuple_GET_ITEM(entry, 0))) == NULL) {
            return NULL;
        }
        int ok = exact_field_ok(obj, value, PyTuple_GET_ITEM(entry, 1),
                                PyLong_AsLong(PyTuple_GET_ITEM(entry, 2)));
        Py_DECREF(value);
        if (!ok) {
            return PyObject_CallOneArg(PyTuple_GET_ITEM(bound, 1), obj);
        }
    }
    Py_RETURN_NONE;
}

static PyMethodDef exact_post_init_def = {
    "__post_init__", (PyCFunction)exact_post_init, METH_O,
    "Check the fields' exact types; otherwise run the Python fallback."};

PyDoc_STRVAR(exact_post_init_doc,
"exact_post_init(spec, fallback)\n--\n\n"
"A __post_init__ that checks each (name, types, rule) of spec by exact type (rule 0:\n"
"one of types; 1: that, and a dict of str to str; 2: None or the object's own type)\n"
"and calls fallback(obj) when any check fails.");

static PyObject *
make_exact_post_init(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyTuple_CheckExact(args[0]) || !PyCallable_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "exact_post_init() takes a spec tuple and a callable");
        return NULL;
    }
    PyObject *spec = args[0];
    for (Py_ssize_t index = 0; index < PyTuple_GET_SIZE(spec); index++) {
        PyObject *entry = PyTuple_GET_ITEM(spec, index);
        if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 3
            || !PyUnicode_CheckExact(PyTuple_GET_ITEM(entry, 0))
            || !PyTuple_CheckExact(PyTuple_GET_ITEM(entry, 1))
            || !PyLong_CheckExact(PyTuple_GET_ITEM(entry, 2))) {
            PyErr_SetString(PyExc_TypeError,
                            "exact_post_init() spec entries are (name, types, rule)");
            return NULL;
        }
        long rule = PyLong_AsLong(PyTuple_GET_ITEM(entry, 2));
        if (rule < EXACT_TYPE || rule > EXACT_OWN_TYPE) {
            PyErr_SetString(PyExc_ValueError, "exact_post_init() rules are 0, 1 or 2");
            return NULL;
        }
        PyObject *types = PyTuple_GET_ITEM(entry, 1);
        for (Py_ssize_t t = 0; t < PyTuple_GET_SIZE(types); t++) {
            if (!PyType_Check(PyTuple_GET_ITEM(types, t))) {
                PyErr_SetString(PyExc_TypeError, "exact_post_init() types must be types");
                return NULL;
            }
        }
    }
    exact_layout *layout = PyMem_Calloc(
        1, sizeof(exact_layout) + (size_t)PyTuple_GET_SIZE(spec) * sizeof(Py_ssize_t));
    if (layout == NULL) {
        return PyErr_NoMemory();
    }
    PyObject *capsule = PyCapsule_New(layout, NULL, exact_layout_free);
    if (capsule == NULL) {
        PyMem_Free(layout);
        return NULL;
    }
    PyObject *bound = PyTuple_Pack(3, spec, args[1], capsule);
    Py_DECREF(capsule);
    if (bound == NULL) {
        return NULL;
    }
    PyObject *function = PyCFunction_NewEx(&exact_post_init_def, bound, NULL);
    Py_DECREF(bound);
    return function;
}


/* ---- the hook executor's fast path ------------------------------------------------------ */

/* An int as nanoseconds; past the range of a long long it is clamped (a limit of "never"). */
static int
as_ns(PyObject *value, long long *out)
{
    int overflow = 0;
    long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (number == -1 && PyErr_Occurred()) {
        return -1;
    }
    *out = overflow > 0 ? LLONG_MAX : (overflow < 0 ? LLONG_MIN : number);
    return 0;
}

/* The exception being raised, as the object an `except ... as exc` clause binds (its
 * traceback attached); the error indicator is cleared. */
static PyObject *
take_exception(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *kind, *value, *traceback;
    PyErr_Fetch(&kind, &value, &traceback);
    PyErr_NormalizeException(&kind, &value, &traceback);
    if (value != NULL && traceback != NULL) {
        PyException_SetTraceback(value, traceback);
    }
    Py_XDECREF(kind);
    Py_XDECREF(traceback);
    return value;
#endif
}

/* Where the fast path stopped, as HookExecutor's _Resume: (hooks run before, the stopping
 * hook's start, what it returned, what it raised, ns inside hooks so far, the dispatch's
 * start, None). Untimed, both times inside hooks are 0. */
static PyObject *
resume_at(Py_ssize_t index, int timed, long long start, long long dispatch_start,
          PyObject *returned, PyObject *raised)
{
    return Py_BuildValue("(nLOOLLO)", index, timed ? start : 0LL, returned, raised,
                         timed ? start - dispatch_start : 0LL, dispatch_start, Py_None);
}

/* One hook's time, counted as LatencySeries.record does and kept in `durations` (a list,
 * or None), and a call past its limit handed to on_slow(index, elapsed). */
static int
account(module_state *st, PyObject *step, Py_ssize_t index, long long elapsed,
        PyObject *durations, PyObject *on_slow)
{
    PyObject *samples = PyTuple_GET_ITEM(step, 1);
    PyObject *elapsed_object = NULL;
    if (samples != Py_None || durations != Py_None) {
        elapsed_object = PyLong_FromLongLong(elapsed);
        if (elapsed_object == NULL) {
            return -1;
        }
    }
    if (samples != Py_None) {
        PyObject *done = PyObject_CallMethodOneArg(samples, st->append_name, elapsed_object);
        if (done == NULL) {
            goto failed;
        }
        Py_DECREF(done);
        PyObject *counted = PyIter_Next(PyTuple_GET_ITEM(step, 2));
        if (counted == NULL) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_RuntimeError, "a hook's call counter ran out");
            }
            goto failed;
        }
        Py_DECREF(counted);
    }
    long long limit;
    if (as_ns(PyTuple_GET_ITEM(step, 3), &limit) < 0) {
        goto failed;
    }
    if (elapsed > limit) {
        PyObject *done = PyObject_CallFunction(on_slow, "nL", index, elapsed);
        if (done == NULL) {
            goto failed;
        }
        Py_DECREF(done);
    }
    if (durations != Py_None && PyList_Append(durations, elapsed_object) < 0) {
        goto failed;
    }
    Py_XDECREF(elapsed_object);
    return 0;
failed:
    Py_XDECREF(elapsed_object);
    return -1;
}

/* The point's own series after a timed dispatch whose hooks all went on (as at the end of
 * the executor's full loop): time inside hooks, the whole dispatch so far, one more call. */
static int
account_point(module_state *st, PyObject *point, long long in_hooks, PyObject *clock,
              long long dispatch_start)
{
    if (!PyTuple_Check(point) || PyTuple_GET_SIZE(point) != 3) {
        PyErr_SetString(PyExc_TypeError, "a point's series is a (side, samples, calls) tuple");
        return -1;
    }
    PyObject *inside = PyLong_FromLongLong(in_hooks);
    if (inside == NULL) {
        return -1;
    }
    PyObject *done = PyObject_CallMethodOneArg(PyTuple_GET_ITEM(point, 0), st->append_name,
                                               inside);
    Py_DECREF(inside);
    if (done == NULL) {
        return -1;
    }
    Py_DECREF(done);
    PyObject *now = PyObject_CallNoArgs(clock);
    if (now == NULL) {
        return -1;
    }
    long long end;
    int bad = as_ns(now, &end);
    Py_DECREF(now);
    if (bad < 0) {
        return -1;
    }
    PyObject *whole = PyLong_FromLongLong(end - dispatch_start);
    if (whole == NULL) {
        return -1;
    }
    done = PyObject_CallMethodOneArg(PyTuple_GET_ITEM(point, 1), st->append_name, whole);
    Py_DECREF(whole);
    if (done == NULL) {
        return -1;
    }
    Py_DECREF(done);
    PyObject *counted = PyIter_Next(PyTuple_GET_ITEM(point, 2));
    if (counted == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_RuntimeError, "a point's call counter ran out");
        }
        return -1;
    }
    Py_DECREF(counted);
    return 0;
}

static PyObject *
run_hooks(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 11) {
        PyErr_Format(PyExc_TypeError, "run_hooks() takes 11 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *fast = args[0], *ctx = args[1], *clock = args[3], *go_on = args[4];
    PyObject *handed_over = args[5], *on_slow = args[6], *durations = args[7];
    PyObject *point = args[8], *results = args[9], *make_result = args[10];
    if (!PyTuple_Check(fast) || !PyType_Check(go_on) || !PyTuple_Check(results)
            || (durations != Py_None && !PyList_Check(durations))) {
        PyErr_SetString(PyExc_TypeError,
                        "run_hooks(fast, ctx, start, clock, go_on, handed_over, on_slow, "
                        "durations, point, results, make_result) needs tuples for fast and "
                        "results, a type for go_on and a list or None for durations");
        return NULL;
    }
    long long dispatch_start;
    if (as_ns(args[2], &dispatch_start) < 0) {
        return NULL;
    }
    module_state *st = state_of(module);
    int timed = clock != Py_None;
    long long start = dispatch_start;
    Py_ssize_t count = PyTuple_GET_SIZE(fast);
    for (Py_ssize_t index = 0; index < count; index++) {
        PyObject *step = PyTuple_GET_ITEM(fast, index);
        if (!PyTuple_Check(step) || PyTuple_GET_SIZE(step) < 4) {
            PyErr_SetString(PyExc_TypeError,
                            "a fast-path step is a (call, samples, counter, limit) tuple");
            return NULL;
        }
        PyObject *out = PyObject_CallOneArg(PyTuple_GET_ITEM(step, 0), ctx);
        if (out == NULL) {
            if (!PyErr_ExceptionMatches(handed_over)) {
                return NULL;  /* KeyboardInterrupt and the like: raised through */
            }
            PyObject *raised = take_exception();
            if (raised == NULL) {
                return NULL;
            }
            PyObject *resume = resume_at(index, timed, start, dispatch_start, Py_None, raised);
            Py_DECREF(raised);
            return resume;
        }
        if (out != Py_None && (PyObject *)Py_TYPE(out) != go_on) {
            PyObject *resume = resume_at(index, timed, start, dispatch_start, out, Py_None);
            Py_DECREF(out);
            return resume;
        }
        Py_DECREF(out);
        if (!timed) {
            continue;
        }
        PyObject *now = PyObject_CallNoArgs(clock);
        if (now == NULL) {
            return NULL;
        }
        long long end;
        int bad = as_ns(now, &end);
        Py_DECREF(now);
        if (bad < 0 || account(st, step, index, end - start, durations, on_slow) < 0) {
            return NULL;
        }
        start = end;
    }
    if (timed && point != Py_None
            && account_point(st, point, start - dispatch_start, clock, dispatch_start) < 0) {
        return NULL;
    }
    if (count < PyTuple_GET_SIZE(results)) {
        return Py_NewRef(PyTuple_GET_ITEM(results, count));
    }
    return PyObject_CallFunction(make_result, "n", count);
}

PyDoc_STRVAR(run_hooks_doc,
"run_hooks(fast, ctx, start, clock, go_on, handed_over, on_slow, durations, point,\n"
"          results, make_result)\n--\n\n"
"The hook executor's fast path (HookExecutor._run_fast): call each (call, samples,\n"
"counter, limit) step's hook with ctx while it returns None or an exact go_on. With a\n"
"clock (else None), time each hook from the end of the one before (the first from\n"
"start), append its time to samples and advance counter (unless samples is None),\n"
"append it to durations (a list, or None), call on_slow(index, elapsed) past its limit,\n"
"and at the end account the dispatch in point's (side, samples, calls) unless point is\n"
"None. Returns results[n] (n hooks run) when all went on, make_result(n) past the end\n"
"of results, else the resume tuple of the hook that stopped (an exception matching\n"
"handed_over is caught and returned in it; any other is raised).");


/* ---- a literal prefilter before a regular-expression search ------------------------------- */

/* Texts longer than this go straight to the search: past it, RE2's lower cost per byte
 * outweighs its fixed cost per call (about 0.7 us) on typical JSON. */
#define PREFILTER_MAX 512

typedef struct {
    Py_ssize_t count;
    Py_ssize_t first[257];   /* needles starting with byte b: first[b] .. first[b + 1] */
    const char **data;       /* needles sorted by first byte (borrowed from `needles`) */
    Py_ssize_t *size;
    unsigned char pairs[65536 / 8]; /* bit (b0 << 8 | b1): a needle starts with b0 b1 */
    unsigned char single[256];      /* a one-byte needle b */
    int any_single;
} prefilter_table;

static void
prefilter_free(PyObject *capsule)
{
    prefilter_table *table = PyCapsule_GetPointer(capsule, NULL);
    if (table != NULL) {
        PyMem_Free(table->data);
        PyMem_Free(table->size);
        PyMem_Free(table);
    }
}

/* Positions whose two bytes start a needle that the scan compares before it leaves the
 * text to the search: a text made of needle beginnings ("sesese...") costs the scan at
 * most this many comparisons more than ordinary text. */
#define PREFILTER_PAIR_BUDGET 64

/* ASCII lower case of each byte (bytes past ASCII never reach it: see prefilter_call). */
static unsigned char fold_table[256];

static void
init_fold_table(void)
{
    for (int c = 0; c < 256; c++) {
        fold_table[c] = (unsigned char)((c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c);
    }
}

static int
is_ascii(const unsigned char *text, Py_ssize_t n)
{
    unsigned char any = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        any |= text[i];
    }
    return any < 0x80;
}

/* 1 when the text, lower-cased, holds a needle, or may (past the budget). A position is
 * looked at further only when a needle starts with its two bytes (one bit test per byte
 * for ordinary text). */
static int
holds_needle(const prefilter_table *table, const unsigned char *text, Py_ssize_t n)
{
    if (n == 0) {
        return 0;
    }
    if (table->any_single) {
        for (Py_ssize_t i = 0; i < n; i++) {
            if (table->single[fold_table[text[i]]]) {
                return 1;
            }
        }
    }
    int budget = PREFILTER_PAIR_BUDGET;
    unsigned int first = fold_table[text[0]];
    for (Py_ssize_t i = 0; i + 1 < n; i++) {
        unsigned int second = fold_table[text[i + 1]];
        unsigned int pair = (first << 8) | second;
        if (table->pairs[pair >> 3] & (1u << (pair & 7))) {
            if (--budget < 0) {
                return 1;
            }
            for (Py_ssize_t k = table->first[first]; k < table->first[first + 1]; k++) {
                Py_ssize_t size = table->size[k];
                const unsigned char *needle = (const unsigned char *)table->data[k];
                if (size > n - i || needle[1] != second) {
                    continue;
                }
                Py_ssize_t j = 2;
                while (j < size && fold_table[text[i + j]] == needle[j]) {
                    j++;
                }
                if (j == size) {
                    return 1;
                }
            }
        }
        first = second;
    }
    return 0;
}

/* The prefiltered search. "self" is (needles, table capsule, search, no_match). */
static PyObject *
prefilter_call(PyObject *bound, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *search = PyTuple_GET_ITEM(bound, 2);
    if (nargs != 3 || !PyBytes_CheckExact(args[0]) || !PyLong_CheckExact(args[1])
            || !PyLong_CheckExact(args[2])) {
        return PyObject_Vectorcall(search, args, (size_t)nargs, NULL);
    }
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    Py_ssize_t end = PyLong_AsSsize_t(args[2]);
    if (pos == -1 || end == -1 || pos > end || end > size || end - pos > PREFILTER_MAX) {
        PyErr_Clear();
        return PyObject_Vectorcall(search, args, (size_t)nargs, NULL);
    }
    const prefilter_table *table = PyCapsule_GetPointer(PyTuple_GET_ITEM(bound, 1), NULL);
    if (table == NULL) {
        return NULL;
    }
    const unsigned char *text = (const unsigned char *)PyBytes_AS_STRING(args[0]) + pos;
    Py_ssize_t n = end - pos;
    /* Not ASCII: case folding is the search's to judge. */
    if (!is_ascii(text, n) || holds_needle(table, text, n)) {
        return PyObject_Vectorcall(search, args, (size_t)nargs, NULL);
    }
    return Py_NewRef(PyTuple_GET_ITEM(bound, 3));
}

static PyMethodDef prefilter_def = {
    "prefiltered", (PyCFunction)(void (*)(void))prefilter_call, METH_FASTCALL,
    "search(raw, pos, endpos) unless raw[pos:endpos], lower-cased, holds none of the "
    "needles: then no_match."};

static PyObject *
make_prefilter(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyTuple_Check(args[0]) || !PyCallable_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "prefilter(needles, search, no_match) needs a tuple of needles and a "
                        "callable search");
        return NULL;
    }
    PyObject *needles = args[0];
    Py_ssize_t count = PyTuple_GET_SIZE(needles);
    prefilter_table *table = PyMem_Calloc(1, sizeof(prefilter_table));
    if (table == NULL) {
        return PyErr_NoMemory();
    }
    table->count = count;
    table->data = PyMem_Calloc((size_t)(count ? count : 1), sizeof(const char *));
    table->size = PyMem_Calloc((size_t)(count ? count : 1), sizeof(Py_ssize_t));
    PyObject *capsule = NULL;
    if (table->data == NULL || table->size == NULL) {
        PyErr_NoMemory();
        goto failed;
    }
    /* Counting sort by first byte. */
    Py_ssize_t per_byte[256] = {0};
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *needle = PyTuple_GET_ITEM(needles, k);
        if (!PyBytes_CheckExact(needle) || PyBytes_GET_SIZE(needle) == 0) {
            PyErr_SetString(PyExc_TypeError, "every needle is a non-empty bytes");
            goto failed;
        }
        const unsigned char *bytes = (const unsigned char *)PyBytes_AS_STRING(needle);
        for (Py_ssize_t i = 0; i < PyBytes_GET_SIZE(needle); i++) {
            if (bytes[i] >= 'A' && bytes[i] <= 'Z') {
                PyErr_SetString(PyExc_ValueError, "needles are lower case (the text is)");
                goto failed;
            }
        }
        per_byte[bytes[0]]++;
        if (PyBytes_GET_SIZE(needle) == 1) {
            table->single[bytes[0]] = 1;
            table->any_single = 1;
        }
        else {
            unsigned int pair = ((unsigned int)bytes[0] << 8) | bytes[1];
            table->pairs[pair >> 3] |= (unsigned char)(1u << (pair & 7));
        }
    }
    table->first[0] = 0;
    for (int b = 0; b < 256; b++) {
        table->first[b + 1] = table->first[b] + per_byte[b];
    }
    Py_ssize_t filled[256] = {0};
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *needle = PyTuple_GET_ITEM(needles, k);
        unsigned char b = (unsigned char)PyBytes_AS_STRING(needle)[0];
        Py_ssize_t at = table->first[b] + filled[b]++;
        table->data[at] = PyBytes_AS_STRING(needle);
        table->size[at] = PyBytes_GET_SIZE(needle);
    }
    capsule = PyCapsule_New(table, NULL, prefilter_free);
    if (capsule == NULL) {
        goto failed;
    }
    /* The needles tuple is kept in the bound tuple: the table borrows its bytes. */
    PyObject *bound = PyTuple_Pack(4, needles, capsule, args[1], args[2]);
    Py_DECREF(capsule);
    if (bound == NULL) {
        return NULL;
    }
    PyObject *function = PyCFunction_NewEx(&prefilter_def, bound, NULL);
    Py_DECREF(bound);
    return function;
failed:
    PyMem_Free(table->data);
    PyMem_Free(table->size);
    PyMem_Free(table);
    return NULL;
}

PyDoc_STRVAR(prefilter_doc,
"prefilter(needles, search, no_match)\n--\n\n"
"A function f(raw, pos, endpos) that returns no_match when raw[pos:endpos] (ASCII bytes,\n"
"at most 512), lower-cased, holds none of needles (non-empty lower-case bytes),\n"
"and search(raw, pos, endpos) otherwise (and for anything else). For a search whose\n"
"every match holds a needle, f gives search's answer, without its fixed cost on the\n"
"common text that cannot match.");

static PyMethodDef speedups_methods[] = {
    {"is_plain_json_safe", (PyCFunction)(void (*)(void))is_plain_json_safe, METH_FASTCALL,
     is_plain_json_safe_doc},
    {"seed_ids", (PyCFunction)seed_ids, METH_O, seed_ids_doc},
    {"new_id", (PyCFunction)new_id, METH_NOARGS, new_id_doc},
    {"event_post_init", (PyCFunction)make_event_post_init, METH_O, event_post_init_doc},
    {"exact_post_init", (PyCFunction)(void (*)(void))make_exact_post_init, METH_FASTCALL,
     exact_post_init_doc},
    {"run_hooks", (PyCFunction)(void (*)(void))run_hooks, METH_FASTCALL, run_hooks_doc},
    {"prefilter", (PyCFunction)(void (*)(void))make_prefilter, METH_FASTCALL, prefilter_doc},
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
    st->append_name = PyUnicode_InternFromString("append");
    init_fold_table();
    st->counter = 0;
    st->seeded = 0;
    if (st->max_int == NULL || st->min_int == NULL || st->data_name == NULL
            || st->append_name == NULL) {
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
    Py_VISIT(st->append_name);
    return 0;
}

static int
speedups_clear(PyObject *module)
{
    module_state *st = state_of(module);
    Py_CLEAR(st->min_int);
    Py_CLEAR(st->max_int);
    Py_CLEAR(st->data_name);
    Py_CLEAR(st->append_name);
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
