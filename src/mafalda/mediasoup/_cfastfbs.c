/* Compiled decoders of FlatBuffers tables into the flatc object API's XxxT instances
   (and, further down, encoders of those instances into FlatBuffers bytes).

   _fastfbs describes each table class from its generated code (per field: kind, vtable
   slot, scalar type, value when absent, nested decoder or union map) and hands that to
   Decoder(); calling the Decoder gives the object _fastfbs's generated Python decoder
   gives, without interpreting a dozen bytecodes per field.

   The buffer is treated as untrusted as far as memory goes: every read is checked
   against it (ValueError otherwise), nesting is bounded and so is the number of tables
   one call may decode (a buffer of n bytes holds at most n / 4 of them: more means
   offsets that point to the same tables again, which could grow exponentially).
   Offsets, lengths, vtable entries and the uint16/uint32/int32 scalars must be aligned
   to their size: the Python decoders read those through word views of the buffer, so
   they would read other bytes than these ones at an unaligned place; refusing keeps the
   two decoders' results the same (and FlatBuffers writers always align them). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_DEPTH 64
#define MAX_FIELDS 64

/* In the order of _fastfbs._NATIVE_KINDS. */
enum { K_SCALAR, K_STRING, K_TABLE, K_VTABLE, K_VSTRING, K_VSCALAR, K_VBYTES, K_UNION, K_COUNT };

typedef struct {
    int kind;
    int slot;            /* byte offset of the field's entry in the vtable */
    char code;           /* struct code of the scalar or of the vector's items */
    char as_bool;        /* the scalar is wrapped in bool() */
    char as_str;         /* strings decode to str, else stay bytes */
    int type_field;      /* union: the field holding its type */
    PyObject *absent;    /* the value when the field is absent */
    PyObject *target;    /* table, vtable: its decoder; union: {type: decoder or None} */
} Field;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyTypeObject *cls;   /* NULL once cleared by the garbage collector */
    Py_ssize_t nfields;
    Field *fields;
    Py_ssize_t nattrs;   /* the attributes, in the order __init__ sets them */
    PyObject **names;
    int *sources;        /* a field's index, or -1 for consts[i] */
    PyObject **consts;
} Decoder;

typedef struct {
    const unsigned char *buf;
    int64_t len;
    PyObject *b;
    PyObject *const *views; /* (b, w, s, h) for Python decoders, or NULL until needed */
    PyObject *made_views;   /* views(b), when this call had to make them */
    int depth;
    int64_t budget;         /* tables this call may still decode */
} Ctx;

static PyTypeObject DecoderType;
static PyObject *views_fn;   /* _fastfbs.views */
static PyObject *no_args;    /* () for object.__new__ */

static int corrupt(const char *what, int64_t at) {
    PyErr_Format(PyExc_ValueError, "corrupt FlatBuffers data: %s at %lld", what, (long long)at);
    return -1;
}

static inline int fits(const Ctx *c, int64_t at, int64_t size) {
    return at >= 0 && at <= c->len - size;
}

static inline uint16_t le16(const unsigned char *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}

static inline uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline uint64_t le64(const unsigned char *p) {
    return (uint64_t)le32(p) | ((uint64_t)le32(p + 4) << 32);
}

static int u16_at(const Ctx *c, int64_t at, uint16_t *out) {
    if ((at & 1) || !fits(c, at, 2))
        return corrupt("vtable entry", at);
    *out = le16(c->buf + at);
    return 0;
}

static int u32_at(const Ctx *c, int64_t at, uint32_t *out) {
    if ((at & 3) || !fits(c, at, 4))
        return corrupt("offset or length", at);
    *out = le32(c->buf + at);
    return 0;
}

/* The position the uoffset at `at` points to. */
static int follow(const Ctx *c, int64_t at, int64_t *out) {
    uint32_t offset;
    if (u32_at(c, at, &offset) < 0)
        return -1;
    *out = at + offset;
    return 0;
}

static int code_size(char code) {
    switch (code) {
    case '?': case 'B': case 'b': return 1;
    case 'H': case 'h': return 2;
    case 'I': case 'i': case 'f': return 4;
    case 'Q': case 'q': case 'd': return 8;
    default: return 0;
    }
}

/* The alignment a table's scalar field needs: the Python decoders read 'H', 'I' and 'i'
   through the word views, the others by byte or with struct (anywhere). */
static int code_align(char code) {
    return code == 'H' ? 2 : (code == 'I' || code == 'i') ? 4 : 1;
}

/* The scalar at p, as struct.unpack('<' + code) gives it. */
static PyObject *scalar_value(char code, const unsigned char *p) {
    double x;
    switch (code) {
    case '?': return PyBool_FromLong(p[0] != 0);
    case 'B': return PyLong_FromLong(p[0]);
    case 'b': return PyLong_FromLong((int8_t)p[0]);
    case 'H': return PyLong_FromLong(le16(p));
    case 'h': return PyLong_FromLong((int16_t)le16(p));
    case 'I': return PyLong_FromUnsignedLong(le32(p));
    case 'i': return PyLong_FromLong((int32_t)le32(p));
    case 'Q': return PyLong_FromUnsignedLongLong(le64(p));
    case 'q': return PyLong_FromLongLong((int64_t)le64(p));
    case 'f':
        x = PyFloat_Unpack4((const char *)p, 1);
        return x == -1.0 && PyErr_Occurred() ? NULL : PyFloat_FromDouble(x);
    case 'd':
        x = PyFloat_Unpack8((const char *)p, 1);
        return x == -1.0 && PyErr_Occurred() ? NULL : PyFloat_FromDouble(x);
    default:
        PyErr_Format(PyExc_SystemError, "unknown scalar code %c", code);
        return NULL;
    }
}

static PyObject *scalar_field(const Ctx *c, const Field *f, int64_t at) {
    PyObject *value;
    int truth;
    if ((at & (code_align(f->code) - 1)) || !fits(c, at, code_size(f->code))) {
        corrupt("scalar", at);
        return NULL;
    }
    value = scalar_value(f->code, c->buf + at);
    if (value == NULL || !f->as_bool || f->code == '?')
        return value;
    truth = PyObject_IsTrue(value);
    Py_DECREF(value);
    return truth < 0 ? NULL : PyBool_FromLong(truth);
}

/* The string the uoffset at `at` points to. */
static PyObject *string_at(const Ctx *c, int64_t at, int as_str) {
    int64_t q;
    uint32_t n;
    const char *chars;
    if (follow(c, at, &q) < 0 || u32_at(c, q, &n) < 0)
        return NULL;
    if (!fits(c, q + 4, n)) {
        corrupt("string", q);
        return NULL;
    }
    chars = (const char *)c->buf + q + 4;
    return as_str ? PyUnicode_DecodeUTF8(chars, n, NULL) : PyBytes_FromStringAndSize(chars, n);
}

/* The vector the uoffset at `at` points to: its first item and length. */
static int vector_at(const Ctx *c, int64_t at, int item_size, int64_t *start, uint32_t *n) {
    int64_t q;
    if (follow(c, at, &q) < 0 || u32_at(c, q, n) < 0)
        return -1;
    if (!fits(c, q + 4, (int64_t)*n * item_size))
        return corrupt("vector", q);
    *start = q + 4;
    return 0;
}

static PyObject *decode_table(Decoder *d, Ctx *c, int64_t p);

/* A nested table by its decoder, given where its uoffset is: directly when the decoder
   is one of ours, else as the generated Python decoders call each other. */
static PyObject *call_nested(PyObject *dec, Ctx *c, int64_t at) {
    int64_t p;
    PyObject *args[5], *pos, *result;
    int i;
    if (follow(c, at, &p) < 0)
        return NULL;
    if (Py_IS_TYPE(dec, &DecoderType))
        return decode_table((Decoder *)dec, c, p);
    if (c->views == NULL) {
        if (views_fn == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "_cfastfbs.set_views() was not called");
            return NULL;
        }
        c->made_views = PyObject_CallOneArg(views_fn, c->b);
        if (c->made_views == NULL)
            return NULL;
        if (!PyTuple_Check(c->made_views) || PyTuple_GET_SIZE(c->made_views) != 4) {
            PyErr_SetString(PyExc_TypeError, "views() must return (b, w, s, h)");
            return NULL;
        }
        c->views = &PyTuple_GET_ITEM(c->made_views, 0);
    }
    pos = PyLong_FromLongLong(p);
    if (pos == NULL)
        return NULL;
    for (i = 0; i < 4; i++)
        args[i] = c->views[i];
    args[4] = pos;
    result = PyObject_Vectorcall(dec, args, 5, NULL);
    Py_DECREF(pos);
    return result;
}

static PyObject *vector_field(const Field *f, Ctx *c, int64_t at) {
    int item_size = f->kind == K_VSCALAR ? code_size(f->code) : f->kind == K_VBYTES ? 1 : 4;
    int64_t q;
    uint32_t n, i;
    PyObject *list, *item;
    if (vector_at(c, at, item_size, &q, &n) < 0)
        return NULL;
    if (f->kind == K_VBYTES)
        return PyBytes_FromStringAndSize((const char *)c->buf + q, n);
    list = PyList_New(n);
    if (list == NULL)
        return NULL;
    for (i = 0; i < n; i++, q += item_size) {
        if (f->kind == K_VTABLE)
            item = call_nested(f->target, c, q);
        else if (f->kind == K_VSTRING)
            item = string_at(c, q, f->as_str);
        else
            item = scalar_value(f->code, c->buf + q);
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, item);
    }
    return list;
}

static PyObject *union_field(const Field *f, PyObject *const *values, Ctx *c, int64_t at) {
    PyObject *dec, *result;
    dec = PyObject_GetItem(f->target, values[f->type_field]);
    if (dec == NULL || dec == Py_None)
        return dec; /* an unknown type decodes to None */
    result = call_nested(dec, c, at);
    Py_DECREF(dec);
    return result;
}

static PyObject *field_value(const Field *f, PyObject *const *values, Ctx *c, int64_t at) {
    switch (f->kind) {
    case K_SCALAR: return scalar_field(c, f, at);
    case K_STRING: return string_at(c, at, f->as_str);
    case K_TABLE: return call_nested(f->target, c, at);
    case K_UNION: return union_field(f, values, c, at);
    default: return vector_field(f, c, at);
    }
}

static PyObject *decode_table(Decoder *d, Ctx *c, int64_t p) {
    PyObject *values[MAX_FIELDS];
    PyObject *obj = NULL, *value;
    Py_ssize_t i, done = 0;
    uint32_t soffset;
    uint16_t vtable_size, o;
    int64_t vt;
    if (d->cls == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "decoder was cleared");
        return NULL;
    }
    if (c->depth >= MAX_DEPTH) {
        PyErr_SetString(PyExc_ValueError, "corrupt FlatBuffers data: tables nested too deep");
        return NULL;
    }
    if (--c->budget < 0) {
        PyErr_SetString(PyExc_ValueError,
                        "corrupt FlatBuffers data: more tables than the buffer can hold");
        return NULL;
    }
    if (u32_at(c, p, &soffset) < 0)
        return NULL;
    vt = p - (int32_t)soffset;
    if (u16_at(c, vt, &vtable_size) < 0)
        return NULL;
    /* Nested Python decoders start their own count: the interpreter's bounds the lot. */
    if (Py_EnterRecursiveCall(" while decoding a FlatBuffers table"))
        return NULL;
    c->depth++;
    for (i = 0; i < d->nfields; i++) {
        const Field *f = &d->fields[i];
        /* Writers leave out the trailing entries of absent fields. */
        o = 0;
        if (vtable_size > f->slot && u16_at(c, vt + f->slot, &o) < 0)
            goto done;
        if (o == 0) {
            value = Py_NewRef(f->absent);
        } else {
            value = field_value(f, values, c, p + o);
            if (value == NULL)
                goto done;
        }
        values[i] = value;
        done = i + 1;
    }
    /* __init__ only stores its parameters (_fastfbs checks it): store them the same way,
       in the same order, without running it. */
    obj = PyBaseObject_Type.tp_new(d->cls, no_args, NULL);
    if (obj == NULL)
        goto done;
    for (i = 0; i < d->nattrs; i++) {
        value = d->sources[i] >= 0 ? values[d->sources[i]] : d->consts[i];
        if (PyObject_GenericSetAttr(obj, d->names[i], value) < 0) {
            Py_CLEAR(obj);
            break;
        }
    }
done:
    c->depth--;
    Py_LeaveRecursiveCall();
    for (i = 0; i < done; i++)
        Py_DECREF(values[i]);
    return obj;
}

static PyObject *decoder_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf,
                                    PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf), pos;
    Py_buffer view;
    Ctx c;
    PyObject *result;
    if ((kwnames != NULL && PyTuple_GET_SIZE(kwnames)) || (nargs != 2 && nargs != 5)) {
        PyErr_SetString(PyExc_TypeError, "a decoder takes (buf, pos) or (b, w, s, h, pos)");
        return NULL;
    }
    pos = PyLong_AsSsize_t(args[nargs - 1]);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    memset(&c, 0, sizeof c);
    c.b = args[0];
    c.views = nargs == 5 ? args : NULL;
    view.obj = NULL;
    if (PyBytes_CheckExact(c.b)) {
        c.buf = (const unsigned char *)PyBytes_AS_STRING(c.b);
        c.len = PyBytes_GET_SIZE(c.b);
    } else {
        if (PyObject_GetBuffer(c.b, &view, PyBUF_SIMPLE) < 0)
            return NULL;
        c.buf = view.buf;
        c.len = view.len;
    }
    c.budget = c.len / 4 + 1;
    result = decode_table((Decoder *)self, &c, pos);
    Py_XDECREF(c.made_views);
    if (view.obj != NULL)
        PyBuffer_Release(&view);
    return result;
}

static int decoder_clear(Decoder *d) {
    Py_ssize_t i;
    Py_CLEAR(d->cls);
    for (i = 0; i < d->nfields; i++) {
        Py_CLEAR(d->fields[i].absent);
        Py_CLEAR(d->fields[i].target);
    }
    for (i = 0; i < d->nattrs; i++) {
        Py_CLEAR(d->names[i]);
        Py_CLEAR(d->consts[i]);
    }
    PyMem_Free(d->fields);
    PyMem_Free(d->names);
    PyMem_Free(d->sources);
    PyMem_Free(d->consts);
    d->fields = NULL;
    d->names = d->consts = NULL;
    d->sources = NULL;
    d->nfields = d->nattrs = 0;
    return 0;
}

static int decoder_traverse(Decoder *d, visitproc visit, void *arg) {
    Py_ssize_t i;
    Py_VISIT(d->cls);
    for (i = 0; i < d->nfields; i++) {
        Py_VISIT(d->fields[i].absent);
        Py_VISIT(d->fields[i].target);
    }
    for (i = 0; i < d->nattrs; i++)
        Py_VISIT(d->consts[i]);
    return 0;
}

static void decoder_dealloc(Decoder *d) {
    PyObject_GC_UnTrack(d);
    decoder_clear(d);
    Py_TYPE(d)->tp_free((PyObject *)d);
}

static int is_scalar_code(const char *code) {
    return code[0] != '\0' && code[1] == '\0' && code_size(code[0]) != 0;
}

static int parse_field(Decoder *d, Py_ssize_t i, PyObject *spec) {
    Field *f = &d->fields[i];
    const char *code;
    int as_bool, as_str;
    PyObject *absent, *target;
    if (!PyTuple_Check(spec)) {
        PyErr_SetString(PyExc_TypeError, "a field is a tuple");
        return -1;
    }
    if (!PyArg_ParseTuple(spec, "iisppiOO;a field is (kind, slot, code, as_bool, as_str, "
                                "type_field, absent, target)",
                          &f->kind, &f->slot, &code, &as_bool, &as_str, &f->type_field, &absent,
                          &target))
        return -1;
    f->as_bool = (char)as_bool;
    f->as_str = (char)as_str;
    f->code = code[0];
    if (f->kind < 0 || f->kind >= K_COUNT)
        return PyErr_Format(PyExc_ValueError, "field %zd: unknown kind %d", i, f->kind), -1;
    if (f->slot < 4 || f->slot > 65534 || (f->slot & 1))
        return PyErr_Format(PyExc_ValueError, "field %zd: bad vtable slot %d", i, f->slot), -1;
    if ((f->kind == K_SCALAR || f->kind == K_VSCALAR) && !is_scalar_code(code))
        return PyErr_Format(PyExc_ValueError, "field %zd: bad scalar code '%s'", i, code), -1;
    if ((f->kind == K_TABLE || f->kind == K_VTABLE) && !PyCallable_Check(target))
        return PyErr_Format(PyExc_TypeError, "field %zd: the decoder is not callable", i), -1;
    if (f->kind == K_UNION) {
        if (f->type_field < 0 || f->type_field >= i || d->fields[f->type_field].kind != K_SCALAR)
            return PyErr_Format(PyExc_ValueError, "field %zd: bad union type field", i), -1;
        if (!PyMapping_Check(target))
            return PyErr_Format(PyExc_TypeError, "field %zd: the union map is no mapping", i), -1;
    }
    f->absent = Py_NewRef(absent);
    f->target = Py_NewRef(target);
    return 0;
}

static int parse_attr(Decoder *d, Py_ssize_t i, PyObject *spec) {
    PyObject *name, *value;
    if (!PyTuple_Check(spec)) {
        PyErr_SetString(PyExc_TypeError, "an attribute is a tuple");
        return -1;
    }
    if (!PyArg_ParseTuple(spec, "UiO;an attribute is (name, field, value)", &name,
                          &d->sources[i], &value))
        return -1;
    if (d->sources[i] < -1 || d->sources[i] >= d->nfields)
        return PyErr_Format(PyExc_ValueError, "attribute %zd: no field %d", i, d->sources[i]), -1;
    Py_INCREF(name);
    PyUnicode_InternInPlace(&name);
    d->names[i] = name;
    d->consts[i] = Py_NewRef(value);
    return 0;
}

static PyObject *decoder_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *keywords[] = {"cls", "fields", "attrs", NULL};
    PyObject *cls, *fields_arg, *attrs_arg, *fields = NULL, *attrs = NULL;
    PyTypeObject *t;
    Decoder *d = NULL;
    Py_ssize_t i, nfields, nattrs;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OO:Decoder", keywords, &PyType_Type, &cls,
                                     &fields_arg, &attrs_arg))
        return NULL;
    t = (PyTypeObject *)cls;
    /* Instances are made as object.__new__ and filled as object.__setattr__ would. */
    if (t->tp_new != PyBaseObject_Type.tp_new || t->tp_setattro != PyObject_GenericSetAttr) {
        PyErr_Format(PyExc_TypeError, "%s has its own __new__ or __setattr__", t->tp_name);
        return NULL;
    }
    /* Tuples: what parsing an item may run cannot change them. */
    fields = PySequence_Tuple(fields_arg);
    attrs = fields ? PySequence_Tuple(attrs_arg) : NULL;
    if (attrs == NULL)
        goto fail;
    nfields = PyTuple_GET_SIZE(fields);
    nattrs = PyTuple_GET_SIZE(attrs);
    if (nfields > MAX_FIELDS) {
        PyErr_Format(PyExc_ValueError, "more than %d fields", MAX_FIELDS);
        goto fail;
    }
    d = (Decoder *)type->tp_alloc(type, 0);
    if (d == NULL)
        goto fail;
    d->vectorcall = decoder_vectorcall;
    d->cls = (PyTypeObject *)Py_NewRef(cls);
    d->fields = PyMem_Calloc(nfields + 1, sizeof(Field));
    d->names = PyMem_Calloc(nattrs + 1, sizeof(PyObject *));
    d->consts = PyMem_Calloc(nattrs + 1, sizeof(PyObject *));
    d->sources = PyMem_Calloc(nattrs + 1, sizeof(int));
    if (d->fields == NULL || d->names == NULL || d->consts == NULL || d->sources == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (i = 0; i < nfields; i++) {
        if (parse_field(d, i, PyTuple_GET_ITEM(fields, i)) < 0)
            goto fail;
        d->nfields = i + 1;
    }
    d->nattrs = nattrs; /* parse_attr fills names and consts, NULL until then */
    for (i = 0; i < nattrs; i++)
        if (parse_attr(d, i, PyTuple_GET_ITEM(attrs, i)) < 0)
            goto fail;
    Py_DECREF(fields);
    Py_DECREF(attrs);
    return (PyObject *)d;
fail:
    Py_XDECREF(d);
    Py_XDECREF(fields);
    Py_XDECREF(attrs);
    return NULL;
}

static PyObject *decoder_repr(Decoder *d) {
    if (d->cls == NULL)
        return PyUnicode_FromString("<Decoder (cleared)>");
    return PyUnicode_FromFormat("<Decoder of %s>", d->cls->tp_name);
}

static PyObject *decoder_get_cls(Decoder *d, void *closure) {
    (void)closure;
    if (d->cls == NULL)
        Py_RETURN_NONE;
    return Py_NewRef((PyObject *)d->cls);
}

static PyGetSetDef decoder_getset[] = {
    {"cls", (getter)decoder_get_cls, NULL, "The class it decodes to.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject DecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mafalda.mediasoup._cfastfbs.Decoder",
    .tp_basicsize = sizeof(Decoder),
    .tp_dealloc = (destructor)decoder_dealloc,
    .tp_vectorcall_offset = offsetof(Decoder, vectorcall),
    .tp_repr = (reprfunc)decoder_repr,
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Decoder(cls, fields, attrs): a table decoder, called as (buf, pos) or "
              "(b, w, s, h, pos).",
    .tp_traverse = (traverseproc)decoder_traverse,
    .tp_clear = (inquiry)decoder_clear,
    .tp_getset = decoder_getset,
    .tp_new = decoder_new,
};

static PyObject *set_views(PyObject *module, PyObject *fn) {
    (void)module;
    if (!PyCallable_Check(fn)) {
        PyErr_SetString(PyExc_TypeError, "views must be callable");
        return NULL;
    }
    Py_XSETREF(views_fn, Py_NewRef(fn));
    Py_RETURN_NONE;
}


/* -- encoders ---------------------------------------------------------------------------

   An Encoder packs an object-API table (XxxT instance) into FlatBuffers bytes, as the
   generated Pack() does with a Builder: back to front, children before their parent,
   each scalar written only when it differs from its default (an optional scalar: when
   not None). The bytes differ from Pack()'s (fields are written by size, vtables are
   not shared) but decode to the same object. Only the expected shapes are handled: a
   value of another kind (a number out of range, a string that is not one, a child of
   a class without an Encoder) raises Unsupported, and the caller packs with the Python
   packer instead, which gives the usual error for a bad value. */

typedef struct {
    int kind;
    int slot;            /* field index in the vtable */
    char code;           /* scalar or vector item code */
    int optional;        /* scalar: written when not None (no default) */
    uint64_t udefault;   /* the default's bits, as scalar_bits() gives them */
    double fdefault;
    PyObject *name;      /* the attribute */
} EField;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *cls_name;
    Py_ssize_t nfields;
    EField *fields;
    Py_ssize_t *order;   /* field indices, widest first */
} Encoder;

static PyTypeObject EncoderType;
static PyObject *encoders;        /* {XxxT class: Encoder} */
static PyObject *prepacked_type;  /* _fastfbs.Prepacked */
static PyObject *Unsupported;     /* _cfastfbs.Unsupported */

typedef struct {
    unsigned char *buf;
    Py_ssize_t cap;
    Py_ssize_t head;
    int depth;
} Out;

#define USED(o) ((o)->cap - (o)->head)

static int unsupported(const char *what, PyObject *name) {
    if (name != NULL)
        PyErr_Format(Unsupported, "%s: %U", what, name);
    else
        PyErr_SetString(Unsupported, what);
    return -1;
}

/* Room for `need` more bytes below head. */
static int reserve(Out *o, Py_ssize_t need) {
    Py_ssize_t used, cap;
    unsigned char *buf;
    if (o->head >= need)
        return 0;
    used = USED(o);
    if (need > PY_SSIZE_T_MAX / 2 - used) {
        PyErr_NoMemory();
        return -1;
    }
    cap = o->cap * 2;
    if (cap < used + need)
        cap = used + need;
    buf = PyMem_Malloc((size_t)cap);
    if (buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(buf + cap - used, o->buf + o->head, (size_t)used);
    PyMem_Free(o->buf);
    o->buf = buf;
    o->head = cap - used;
    o->cap = cap;
    return 0;
}

/* Zeros so that `size` bytes written after `additional` more are aligned to `size`. */
static int prep(Out *o, int size, Py_ssize_t additional) {
    Py_ssize_t pad = (-(USED(o) + additional)) & (size - 1);
    if (reserve(o, pad + size + additional) < 0)
        return -1;
    o->head -= pad;
    memset(o->buf + o->head, 0, (size_t)pad);
    return 0;
}

static inline void put_le(Out *o, uint64_t v, int size) {
    int i;
    o->head -= size;
    for (i = 0; i < size; i++)
        o->buf[o->head + i] = (unsigned char)(v >> (8 * i));
}

/* The bytes of scalar `v` for `code` (little-endian in *bits); Unsupported when out of
   range or not a number of that kind. */
static int scalar_bits(char code, PyObject *v, uint64_t *bits, PyObject *name) {
    long long x;
    int overflow;
    double d;
    float f;
    switch (code) {
    case '?':
        x = PyObject_IsTrue(v);
        if (x < 0)
            return -1;
        *bits = (uint64_t)x;
        return 0;
    case 'f': case 'd':
        if (!PyFloat_Check(v) && !PyLong_Check(v))
            return unsupported("not a number", name);
        d = PyFloat_AsDouble(v);
        if (d == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return unsupported("bad float", name);
        }
        if (code == 'd') {
            memcpy(bits, &d, 8);
            return 0;
        }
        if (isfinite(d) && (d > FLT_MAX || d < -FLT_MAX))
            return unsupported("float out of range", name);
        f = (float)d;
        {
            uint32_t u;
            memcpy(&u, &f, 4);
            *bits = u;
        }
        return 0;
    case 'Q':
        if (!PyLong_Check(v))
            return unsupported("not an integer", name);
        *bits = PyLong_AsUnsignedLongLong(v);
        if (*bits == (uint64_t)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            return unsupported("integer out of range", name);
        }
        return 0;
    default:
        break;
    }
    if (!PyLong_Check(v))
        return unsupported("not an integer", name);
    x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (x == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return unsupported("integer out of range", name);
    }
    switch (code) {
    case 'B': if (x < 0 || x > 0xFF) goto range; break;
    case 'b': if (x < -0x80 || x > 0x7F) goto range; break;
    case 'H': if (x < 0 || x > 0xFFFF) goto range; break;
    case 'h': if (x < -0x8000 || x > 0x7FFF) goto range; break;
    case 'I': if (x < 0 || x > 0xFFFFFFFFLL) goto range; break;
    case 'i': if (x < -0x80000000LL || x > 0x7FFFFFFFLL) goto range; break;
    case 'q': break;
    default: return unsupported("unknown scalar code", name);
    }
    *bits = (uint64_t)x;
    return 0;
range:
    return unsupported("integer out of range", name);
}

static int is_default(const EField *f, uint64_t bits) {
    double d;
    float x;
    switch (f->code) {
    case 'f':
        { uint32_t u = (uint32_t)bits; memcpy(&x, &u, 4); }
        return (double)x == f->fdefault;
    case 'd':
        memcpy(&d, &bits, 8);
        return d == f->fdefault;
    default:
        return bits == f->udefault;
    }
}

static int encode_table(Encoder *e, PyObject *obj, Out *o, uint32_t *off);

static int put_string(Out *o, PyObject *v, uint32_t *off, PyObject *name) {
    const char *data;
    Py_ssize_t n;
    if (PyUnicode_Check(v)) {
        data = PyUnicode_AsUTF8AndSize(v, &n);
        if (data == NULL) {
            PyErr_Clear();
            return unsupported("string not encodable", name);
        }
    } else if (PyBytes_Check(v)) {
        data = PyBytes_AS_STRING(v);
        n = PyBytes_GET_SIZE(v);
    } else {
        return unsupported("not a string", name);
    }
    if (n > 0x7FFFFFF0)
        return unsupported("string too long", name);
    if (prep(o, 4, n + 1) < 0)
        return -1;
    o->head -= n + 1;
    memcpy(o->buf + o->head, data, (size_t)n);
    o->buf[o->head + n] = 0;
    put_le(o, (uint64_t)n, 4);
    *off = (uint32_t)USED(o);
    return 0;
}

/* A Prepacked block: its bytes, copied at its alignment. */
static int put_prepacked(Out *o, PyObject *v, uint32_t *off) {
    PyObject *data = NULL, *root = NULL, *align = NULL;
    long r, a;
    Py_ssize_t n;
    int rc = -1;
    data = PyObject_GetAttrString(v, "data");
    root = PyObject_GetAttrString(v, "root");
    align = PyObject_GetAttrString(v, "align");
    if (data == NULL || root == NULL || align == NULL)
        goto done;
    if (!PyBytes_Check(data) || !PyLong_Check(root) || !PyLong_Check(align)) {
        unsupported("malformed Prepacked", NULL);
        goto done;
    }
    r = PyLong_AsLong(root);
    a = PyLong_AsLong(align);
    n = PyBytes_GET_SIZE(data);
    if (r < 0 || r > n || !(a == 1 || a == 2 || a == 4 || a == 8)) {
        if (!PyErr_Occurred())
            unsupported("malformed Prepacked", NULL);
        goto done;
    }
    if (prep(o, (int)a, 0) < 0 || reserve(o, n) < 0)
        goto done;
    o->head -= n;
    memcpy(o->buf + o->head, PyBytes_AS_STRING(data), (size_t)n);
    *off = (uint32_t)(USED(o) - n + r);
    rc = 0;
done:
    Py_XDECREF(data);
    Py_XDECREF(root);
    Py_XDECREF(align);
    return rc;
}

/* A child table (or Prepacked block): its offset. */
static int put_child(Out *o, PyObject *v, uint32_t *off, PyObject *name) {
    PyObject *enc;
    if ((PyObject *)Py_TYPE(v) == prepacked_type)
        return put_prepacked(o, v, off);
    enc = PyDict_GetItemWithError(encoders, (PyObject *)Py_TYPE(v));
    if (enc == NULL) {
        if (PyErr_Occurred())
            return -1;
        return unsupported("no encoder for a child", name);
    }
    if (Py_TYPE(enc) != &EncoderType)
        return unsupported("not an Encoder in the registry", name);
    return encode_table((Encoder *)enc, v, o, off);
}

static int put_vector(Out *o, const EField *f, PyObject *v, uint32_t *off) {
    Py_ssize_t n, i;
    int size, rc = -1;
    uint32_t *offs = NULL;
    if (f->kind == K_VBYTES) {
        const char *data;
        if (PyBytes_Check(v)) {
            data = PyBytes_AS_STRING(v);
            n = PyBytes_GET_SIZE(v);
        } else if (PyByteArray_Check(v)) {
            data = PyByteArray_AS_STRING(v);
            n = PyByteArray_GET_SIZE(v);
        } else {
            return unsupported("not bytes", f->name);
        }
        if (n > 0x7FFFFFF0)
            return unsupported("bytes too long", f->name);
        if (prep(o, 4, n) < 0)
            return -1;
        o->head -= n;
        memcpy(o->buf + o->head, data, (size_t)n);
        put_le(o, (uint64_t)n, 4);
        *off = (uint32_t)USED(o);
        return 0;
    }
    if (!PyList_Check(v) && !PyTuple_Check(v))
        return unsupported("not a list", f->name);
    n = PySequence_Fast_GET_SIZE(v);
    if (n > 0x1000000)
        return unsupported("vector too long", f->name);
    if (f->kind == K_VSCALAR) {
        size = code_size(f->code);
        if (prep(o, 4, n * size) < 0 || prep(o, size, n * size) < 0)
            return -1;
        for (i = n - 1; i >= 0; i--) {
            uint64_t bits;
            if (scalar_bits(f->code, PySequence_Fast_GET_ITEM(v, i), &bits, f->name) < 0)
                return -1;
            put_le(o, bits, size);
        }
        put_le(o, (uint64_t)n, 4);
        *off = (uint32_t)USED(o);
        return 0;
    }
    /* strings or tables: pack each, then the vector of their offsets */
    offs = PyMem_Malloc(sizeof(uint32_t) * (size_t)(n ? n : 1));
    if (offs == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(v, i);
        if (f->kind == K_VSTRING ? put_string(o, item, &offs[i], f->name)
                                 : put_child(o, item, &offs[i], f->name))
            goto done;
        /* a child may have changed the list: stop at what is left */
        if (PySequence_Fast_GET_SIZE(v) != n) {
            unsupported("list changed while packing", f->name);
            goto done;
        }
    }
    if (prep(o, 4, n * 4) < 0)
        goto done;
    for (i = n - 1; i >= 0; i--) {
        /* PrependUOffsetTRelative: relative to where it is written */
        put_le(o, (uint64_t)(USED(o) + 4 - offs[i]), 4);
    }
    put_le(o, (uint64_t)n, 4);
    *off = (uint32_t)USED(o);
    rc = 0;
done:
    PyMem_Free(offs);
    return rc;
}

static int field_width(const EField *f) {
    return f->kind == K_SCALAR ? code_size(f->code) : 4;
}

static int encode_table(Encoder *e, PyObject *obj, Out *o, uint32_t *off) {
    PyObject *vals[MAX_FIELDS];
    uint64_t bits[MAX_FIELDS];
    char present[MAX_FIELDS];
    uint32_t slots[MAX_FIELDS];
    Py_ssize_t i, j, nslots = 0;
    uint32_t object_end, object_at, child;
    int rc = -1;
    if (o->depth >= MAX_DEPTH)
        return unsupported("nested too deep", e->cls_name);
    o->depth++;
    for (i = 0; i < e->nfields; i++)
        vals[i] = NULL;
    /* children first (and every value checked before anything of the table is written) */
    for (i = 0; i < e->nfields; i++) {
        const EField *f = &e->fields[i];
        PyObject *v = PyObject_GetAttr(obj, f->name);
        if (v == NULL) {
            PyErr_Clear();
            unsupported("missing attribute", f->name);
            goto done;
        }
        vals[i] = v;
        present[i] = 0;
        if (f->kind == K_SCALAR) {
            if (v == Py_None && f->optional)
                continue;
            if (scalar_bits(f->code, v, &bits[i], f->name) < 0)
                goto done;
            present[i] = f->optional || !is_default(f, bits[i]);
            continue;
        }
        if (v == Py_None)
            continue;
        switch (f->kind) {
        case K_STRING:
            if (put_string(o, v, &child, f->name) < 0)
                goto done;
            break;
        case K_TABLE: case K_UNION:
            if (put_child(o, v, &child, f->name) < 0)
                goto done;
            break;
        default:
            if (put_vector(o, f, v, &child) < 0)
                goto done;
            break;
        }
        bits[i] = child;
        present[i] = 1;
    }
    /* the table: its fields, widest first; then its vtable */
    object_end = (uint32_t)USED(o);
    for (i = 0; i < MAX_FIELDS; i++)
        slots[i] = 0;
    for (j = 0; j < e->nfields; j++) {
        const EField *f;
        int width;
        i = e->order[j];
        if (!present[i])
            continue;
        f = &e->fields[i];
        width = field_width(f);
        if (prep(o, width, 0) < 0)
            goto done;
        if (f->kind == K_SCALAR)
            put_le(o, bits[i], width);
        else
            put_le(o, (uint64_t)(USED(o) + 4 - bits[i]), 4);
        slots[f->slot] = (uint32_t)USED(o);
        if (f->slot + 1 > nslots)
            nslots = f->slot + 1;
    }
    if (prep(o, 4, 0) < 0)
        goto done;
    put_le(o, 0, 4); /* the vtable's soffset, below */
    object_at = (uint32_t)USED(o);
    if (prep(o, 2, (nslots + 2) * 2) < 0)
        goto done;
    for (i = nslots - 1; i >= 0; i--)
        put_le(o, slots[i] ? object_at - slots[i] : 0, 2);
    put_le(o, object_at - object_end, 2);
    put_le(o, (uint64_t)((nslots + 2) * 2), 2);
    {
        Py_ssize_t at = o->cap - object_at;
        int32_t soff = (int32_t)(USED(o) - object_at);
        for (i = 0; i < 4; i++)
            o->buf[at + i] = (unsigned char)((uint32_t)soff >> (8 * i));
    }
    *off = object_at;
    rc = 0;
done:
    for (i = 0; i < e->nfields; i++)
        Py_XDECREF(vals[i]);
    o->depth--;
    return rc;
}

static PyObject *encoder_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf,
                                    PyObject *kwnames) {
    Out o;
    uint32_t root;
    PyObject *data, *result;
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "an Encoder takes one table");
        return NULL;
    }
    if (encoders == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "set_encoders() not called");
        return NULL;
    }
    o.cap = 512;
    o.head = o.cap;
    o.depth = 0;
    o.buf = PyMem_Malloc((size_t)o.cap);
    if (o.buf == NULL)
        return PyErr_NoMemory();
    if (encode_table((Encoder *)self, args[0], &o, &root) < 0) {
        PyMem_Free(o.buf);
        return NULL;
    }
    data = PyBytes_FromStringAndSize((const char *)o.buf + o.head, USED(&o));
    PyMem_Free(o.buf);
    if (data == NULL)
        return NULL;
    result = Py_BuildValue("(NI)", data, (unsigned int)root);
    return result;
}

static void encoder_dealloc(Encoder *e) {
    Py_ssize_t i;
    if (e->fields != NULL) {
        for (i = 0; i < e->nfields; i++)
            Py_XDECREF(e->fields[i].name);
        PyMem_Free(e->fields);
    }
    PyMem_Free(e->order);
    Py_XDECREF(e->cls_name);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

/* Encoder(cls_name, [(kind, slot, code, name, default), ...]) */
static PyObject *encoder_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *cls_name, *specs;
    Encoder *e;
    Py_ssize_t n, i, j, w;
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "Encoder() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "UO!:Encoder", &cls_name, &PyList_Type, &specs))
        return NULL;
    n = PyList_GET_SIZE(specs);
    if (n > MAX_FIELDS) {
        PyErr_SetString(PyExc_ValueError, "too many fields");
        return NULL;
    }
    e = (Encoder *)type->tp_alloc(type, 0);
    if (e == NULL)
        return NULL;
    e->vectorcall = encoder_vectorcall;
    Py_INCREF(cls_name);
    e->cls_name = cls_name;
    e->fields = PyMem_Calloc((size_t)(n ? n : 1), sizeof(EField));
    e->order = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Py_ssize_t));
    if (e->fields == NULL || e->order == NULL) {
        Py_DECREF(e);
        return PyErr_NoMemory();
    }
    for (i = 0; i < n; i++) {
        EField *f = &e->fields[i];
        PyObject *spec = PyList_GET_ITEM(specs, i), *name, *dflt;
        const char *code;
        if (!PyArg_ParseTuple(spec, "iisUO", &f->kind, &f->slot, &code, &name, &dflt))
            goto fail;
        e->nfields = i + 1;
        Py_INCREF(name);
        f->name = name;
        f->code = code[0];
        if (f->kind < 0 || f->kind >= K_COUNT || f->slot < 0 || f->slot >= MAX_FIELDS) {
            PyErr_SetString(PyExc_ValueError, "bad field spec");
            goto fail;
        }
        if ((f->kind == K_SCALAR || f->kind == K_VSCALAR) &&
            (strlen(code) != 1 || code_size(f->code) == 0)) {
            PyErr_Format(PyExc_ValueError, "bad scalar code %R", spec);
            goto fail;
        }
        if (f->kind == K_SCALAR) {
            uint64_t bits;
            f->optional = dflt == Py_None;
            if (!f->optional) {
                if (f->code == 'f' || f->code == 'd') {
                    f->fdefault = PyFloat_AsDouble(dflt);
                    if (f->fdefault == -1.0 && PyErr_Occurred())
                        goto fail;
                } else {
                    if (scalar_bits(f->code, dflt, &bits, name) < 0)
                        goto fail;
                    f->udefault = bits;
                }
            }
        }
    }
    /* widest first, keeping the order of fields of one width */
    j = 0;
    for (w = 8; w >= 1; w /= 2)
        for (i = 0; i < n; i++)
            if (field_width(&e->fields[i]) == w)
                e->order[j++] = i;
    return (PyObject *)e;
fail:
    Py_DECREF(e);
    return NULL;
}

static PyObject *encoder_repr(Encoder *e) {
    return PyUnicode_FromFormat("<Encoder %U>", e->cls_name);
}

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mafalda.mediasoup._cfastfbs.Encoder",
    .tp_basicsize = sizeof(Encoder),
    .tp_dealloc = (destructor)encoder_dealloc,
    .tp_vectorcall_offset = offsetof(Encoder, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_repr = (reprfunc)encoder_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Encoder(cls_name, fields): called with a table, gives (bytes, root offset "
              "from the end).",
    .tp_new = encoder_new,
};

static PyObject *set_encoders(PyObject *module, PyObject *args) {
    PyObject *registry, *prepacked;
    if (!PyArg_ParseTuple(args, "O!O:set_encoders", &PyDict_Type, &registry, &prepacked))
        return NULL;
    Py_INCREF(registry);
    Py_XSETREF(encoders, registry);
    Py_INCREF(prepacked);
    Py_XSETREF(prepacked_type, prepacked);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"set_views", set_views, METH_O,
     "set_views(fn): how to make (b, w, s, h) of a buffer for nested Python decoders."},
    {"set_encoders", set_encoders, METH_VARARGS,
     "set_encoders(registry, prepacked_type): the {class: Encoder} children are packed by."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "mafalda.mediasoup._cfastfbs",
    .m_doc = "Compiled FlatBuffers table decoders and encoders for mafalda.mediasoup._fastfbs.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__cfastfbs(void) {
    PyObject *module;
    if (PyType_Ready(&DecoderType) < 0 || PyType_Ready(&EncoderType) < 0)
        return NULL;
    if (no_args == NULL && (no_args = PyTuple_New(0)) == NULL)
        return NULL;
    module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    if (Unsupported == NULL) {
        Unsupported = PyErr_NewExceptionWithDoc(
            "mafalda.mediasoup._cfastfbs.Unsupported",
            "A value an Encoder does not pack: pack it with the Python packer.",
            PyExc_ValueError, NULL);
        if (Unsupported == NULL) {
            Py_DECREF(module);
            return NULL;
        }
    }
    if (PyModule_AddObjectRef(module, "Decoder", (PyObject *)&DecoderType) < 0 ||
        PyModule_AddObjectRef(module, "Encoder", (PyObject *)&EncoderType) < 0 ||
        PyModule_AddObjectRef(module, "Unsupported", Unsupported) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
