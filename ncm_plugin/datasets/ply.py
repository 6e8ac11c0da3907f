"""PLY files: read one element as a numpy structured array, write vertices (+ triangles).

Written from the format description (Greg Turk, "The PLY Polygon File
Format"): a text header

    ply
    format binary_little_endian 1.0      (or ascii / binary_big_endian)
    comment ...
    element vertex 81369
    property float x                      (one line per scalar property)
    property list uchar int vertex_indices (a list: count type, item type)
    end_header

then the elements in header order. Binary elements are packed records, so an
element of scalar properties is one numpy structured dtype and is read in one
``np.fromfile``; ascii elements are one line per record. ScanNet meshes are
binary little endian: a ``vertex`` element of scalars followed by a ``face``
element of triangles.

An element can be read when every element before it has a known size: scalar
properties only, or (binary) lists that all have the same length, which is
checked on the whole element at once (ScanNet's triangles).
"""
from pathlib import Path
from typing import NamedTuple

import numpy as np

FORMATS = {'ascii': None, 'binary_little_endian': '<', 'binary_big_endian': '>'}
TYPES = {
    'char': 'i1', 'uchar': 'u1', 'short': 'i2', 'ushort': 'u2', 'int': 'i4', 'uint': 'u4',
    'float': 'f4', 'double': 'f8',
    'int8': 'i1', 'uint8': 'u1', 'int16': 'i2', 'uint16': 'u2', 'int32': 'i4', 'uint32': 'u4',
    'float32': 'f4', 'float64': 'f8',
}
MAX_HEADER_BYTES = 1 << 20


class PlyError(ValueError):
    """A PLY file that cannot be read: the message names the file."""


class Property(NamedTuple):
    name: str
    type: str  # numpy type code without byte order, e.g. 'f4'
    count_type: str | None = None  # lists only: type of the item count


class Element(NamedTuple):
    name: str
    count: int
    properties: tuple

    @property
    def is_scalar(self):
        return all(p.count_type is None for p in self.properties)

    def dtype(self, order):
        """Record dtype of a scalar element, byte order ``order`` ('<', '>' or '=')."""
        return np.dtype([(p.name, order + p.type) for p in self.properties])


class Header(NamedTuple):
    format: str
    elements: tuple
    data_offset: int  # bytes from the start of the file to the first element


def read_header(path):
    """Parse the header of ``path``; raises PlyError naming the file."""
    path = Path(path)
    with open(path, 'rb') as f:
        if f.read(4).rstrip(b'\r\n') != b'ply':
            raise PlyError(f"{path}: not a PLY file (it does not start with 'ply')")
        f.seek(0)
        head = f.read(MAX_HEADER_BYTES)
    end = head.find(b'\nend_header') + 1
    if end <= 0:
        raise PlyError(f"{path}: PLY header has no 'end_header' line (truncated file?)")
    newline = head.find(b'\n', end)
    if newline < 0:
        raise PlyError(f"{path}: PLY file ends inside its header (truncated file?)")
    lines = head[:end].decode('ascii', errors='replace').splitlines()
    fmt, elements = None, []
    for number, line in enumerate(lines[1:], start=2):
        words = line.split()
        if not words or words[0] in ('comment', 'obj_info'):
            continue
        try:
            if words[0] == 'format':
                fmt = words[1]
                if fmt not in FORMATS:
                    raise PlyError(f"{path}: unknown PLY format {fmt!r} (line {number})")
            elif words[0] == 'element':
                elements.append(Element(words[1], int(words[2]), ()))
            elif words[0] == 'property':
                if not elements:
                    raise PlyError(f"{path}: property before any element (line {number})")
                if words[1] == 'list':
                    prop = Property(words[4], TYPES[words[3]], TYPES[words[2]])
                else:
                    prop = Property(words[2], TYPES[words[1]])
                last = elements[-1]
                elements[-1] = last._replace(properties=last.properties + (prop,))
            else:
                raise PlyError(f"{path}: unexpected PLY header line {number}: {line!r}")
        except (IndexError, KeyError, ValueError) as error:
            if isinstance(error, PlyError):
                raise
            raise PlyError(f"{path}: malformed PLY header line {number}: {line!r}") from None
    if fmt is None:
        raise PlyError(f"{path}: PLY header has no 'format' line")
    return Header(fmt, tuple(elements), newline + 1)


def read_element(path, name='vertex'):
    """Element ``name`` of a PLY file as a structured array ``[count]`` (native byte order).

    Raises PlyError naming the file when the file is shorter than its header
    declares (a truncated download), when a row does not parse, or when an
    element before ``name`` has lists of varying length.
    """
    path = Path(path)
    header = read_header(path)
    names = [e.name for e in header.elements]
    if name not in names:
        raise PlyError(f"{path}: no element {name!r} in this PLY file (it has {names})")
    if header.format == 'ascii':
        data = _read_ascii(path, header, name)
    else:
        data = _read_binary(path, header, name)
    return data.astype(data.dtype.newbyteorder('='), copy=False)


def _read_binary(path, header, name):
    """Element ``name`` of a binary file, after checking the file holds every element it declares."""
    order = FORMATS[header.format]
    size = path.stat().st_size
    offset, start = header.data_offset, None
    for element in header.elements:
        if element.name == name:
            if not element.is_scalar:
                raise PlyError(f"{path}: element {name!r} has list properties; only scalar "
                               f"elements can be read as arrays")
            start = offset
        nbytes = _binary_nbytes(path, element, order, offset, size)
        if nbytes is None:  # varying lists: the elements after it cannot be located
            if start is None:
                raise PlyError(f"{path}: cannot locate element {name!r}: element "
                               f"{element.name!r} before it has lists of varying length")
            break
        offset += nbytes
        if offset > size:
            raise PlyError(f"{path}: truncated PLY file: element {element.name!r} ends at byte "
                           f"{offset} but the file has {size} bytes")
    element = next(e for e in header.elements if e.name == name)
    return np.fromfile(path, dtype=element.dtype(order), count=element.count, offset=start)


def _binary_nbytes(path, element, order, offset, size):
    """Bytes of a binary element: exact for scalars and constant-length lists, else None."""
    if element.is_scalar:
        return element.count * element.dtype(order).itemsize
    if element.count == 0:
        return 0
    if len(element.properties) != 1:
        return None
    prop = element.properties[0]
    count_dtype = np.dtype(order + prop.count_type)
    if offset + count_dtype.itemsize > size:
        return element.count * count_dtype.itemsize  # a lower bound: the caller reports it
    first = int(np.fromfile(path, dtype=count_dtype, count=1, offset=offset)[0])
    record = np.dtype([('n', count_dtype), ('items', order + prop.type, (first,))])
    nbytes = element.count * record.itemsize
    if offset + nbytes > size:
        return nbytes  # the caller reports the truncation
    counts = np.memmap(path, dtype=record, mode='r', offset=offset, shape=(element.count,))['n']
    return nbytes if bool((counts == first).all()) else None


def _read_ascii(path, header, name):
    before = 0
    for element in header.elements:
        if element.name == name:
            break
        before += element.count  # ascii: one line per record, lists included
    if not element.is_scalar:
        raise PlyError(f"{path}: element {name!r} has list properties; only scalar "
                       f"elements can be read as arrays")
    with open(path, 'rb') as f:
        f.seek(header.data_offset)
        try:
            data = np.loadtxt(f, dtype=element.dtype('='), skiprows=before,
                              max_rows=element.count, ndmin=1)
        except ValueError as error:
            raise PlyError(f"{path}: element {name!r}: a row does not parse ({error})") from None
    if len(data) != element.count:
        raise PlyError(f"{path}: truncated PLY file: element {name!r} declares {element.count} "
                       f"rows but the file holds {len(data)}")
    return data


def write_ply(path, vertices, faces=None, binary=True, comments=()):
    """Write a structured array ``vertices [N]`` and optional triangles ``faces [F, 3]``.

    Binary files are little endian, as ScanNet's. Field types must be in TYPES.
    """
    path = Path(path)
    vertices = np.asarray(vertices)
    names = {np.dtype(v).str[1:]: k for k, v in TYPES.items() if not k[-1].isdigit()}
    lines = ['ply', f"format {'binary_little_endian' if binary else 'ascii'} 1.0"]
    lines += [f'comment {c}' for c in comments]
    lines.append(f'element vertex {len(vertices)}')
    lines += [f'property {names[vertices.dtype[f].str[1:]]} {f}' for f in vertices.dtype.names]
    if faces is not None:
        faces = np.asarray(faces, dtype=np.int32).reshape(-1, 3)
        lines += [f'element face {len(faces)}', 'property list uchar int vertex_indices']
    lines.append('end_header')
    with open(path, 'wb') as f:
        f.write(('\n'.join(lines) + '\n').encode('ascii'))
        if binary:
            f.write(vertices.astype(vertices.dtype.newbyteorder('<')).tobytes())
            if faces is not None:
                record = np.zeros(len(faces), dtype=[('n', 'u1'), ('v', '<i4', (3,))])
                record['n'], record['v'] = 3, faces
                f.write(record.tobytes())
        else:
            fmt = ' '.join('%.6g' if vertices.dtype[n].kind == 'f' else '%d'
                           for n in vertices.dtype.names)
            np.savetxt(f, vertices, fmt=fmt)
            if faces is not None:
                np.savetxt(f, np.c_[np.full(len(faces), 3), faces], fmt='%d')
