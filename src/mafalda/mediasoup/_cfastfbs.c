/* Compiled decoders of FlatBuffers tables into the flatc object API's XxxT instances.

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
#include <stdint.h>

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

static PyMethodDef module_methods[] = {
    {"set_views", set_views, METH_O,
     "set_views(fn): how to make (b, w, s, h) of a buffer for nested Python decoders."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "mafalda.mediasoup._cfastfbs",
    .m_doc = "Compiled FlatBuffers table decoders for mafalda.mediasoup._fastfbs.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__cfastfbs(void) {
    PyObject *module;
    if (PyType_Ready(&DecoderType) < 0)
        return NULL;
    if (no_args == NULL && (no_args = PyTuple_New(0)) == NULL)
        return NULL;
    module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "Decoder", (PyObject *)&DecoderType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
