//! The linker: loads an object and its `DT_NEEDED` dependencies, maps them through
//! [`Memory`], resolves every symbol reference through the provider chain, applies the
//! relocations, seals `PT_GNU_RELRO`, and runs initializers in dependency order
//! (finalizers in reverse).

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use keel_types::VirtAddr;

use crate::memory::{Memory, PageRange};
use crate::object::{
    FunctionArray, ObjectFile, ObjectKind, StackRequirement, SymbolBinding, SymbolKind,
};
use crate::relocation::RelocationKind;
use crate::symbols::{SymbolProvider, SymbolRequest};
use crate::tls::{NoThreadLocalStorage, ThreadLocalStorage, TlsModuleId, TlsTemplate};
use crate::{LinkError, MissingSymbol, ObjectError};

// The linker's unsafe parts, each allowed by name: the entry points and the calls of
// initializers and finalizers, the mapping of segments, the application of
// relocations. This module itself has no unsafe code.
#[allow(unsafe_code)]
mod lifecycle;
#[allow(unsafe_code)]
mod mapping;
#[allow(unsafe_code)]
mod relocate;
mod resolve;

/// The names the kernel provides itself: a `DT_NEEDED` of one of them resolves to the
/// exported-symbols provider instead of loading a file (OSv's rule).
pub const KERNEL_PROVIDED_LIBRARIES: [&str; 6] = [
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "ld-linux-x86-64.so.2",
];

/// The default library directories searched after `DT_RUNPATH`/`DT_RPATH`.
pub const DEFAULT_LIBRARY_DIRECTORIES: [&str; 4] = [
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib",
    "/usr/lib",
];

/// Where object files come from, by path (the VFS in the guest, the filesystem on the
/// host). The linker builds the candidate paths; the source only reads them.
pub trait LibrarySource {
    /// A file's contents: an owned buffer, or a view the source keeps valid (say, of
    /// the guest's page cache or boot image), so that reading need not copy. The linker only reads it, and drops it once the
    /// object is mapped.
    type File: AsRef<[u8]>;

    /// The whole file at `path`, or `None` if there is none.
    fn read(&mut self, path: &str) -> Option<Self::File>;
}

/// Settings of a [`Linker`].
#[derive(Debug, Clone)]
pub struct LinkerOptions {
    /// Searched, in order, after the requesting object's `DT_RUNPATH` (or `DT_RPATH`).
    pub default_directories: Vec<String>,
    /// `DT_NEEDED` names satisfied by the exported-symbols provider.
    pub provided_libraries: Vec<String>,
    /// Whether the linker may run the objects' code: ifunc resolvers while relocating,
    /// initializers after. With `false`, an ifunc reference or `IRELATIVE` is an error
    /// ([`ObjectError::CodeExecutionRefused`]) and no initializer runs (nor, then, a
    /// finalizer): objects are mapped and relocated only, for inspection and for
    /// feeding untrusted bytes in tests.
    pub run_code: bool,
}

impl Default for LinkerOptions {
    fn default() -> Self {
        LinkerOptions {
            default_directories: DEFAULT_LIBRARY_DIRECTORIES
                .iter()
                .map(|path| path.to_string())
                .collect(),
            provided_libraries: KERNEL_PROVIDED_LIBRARIES
                .iter()
                .map(|name| name.to_string())
                .collect(),
            run_code: true,
        }
    }
}

/// A loaded object's handle (its index in load order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectId(usize);

impl ObjectId {
    /// The position in load order (0 is the first object loaded).
    pub fn index(self) -> usize {
        self.0
    }
}

/// What a `DT_NEEDED` entry resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    /// A name the kernel provides (`libc.so.6`, ...): the exported-symbols provider.
    Provided,
    /// A loaded object.
    Object(ObjectId),
}

/// A loaded object.
#[derive(Debug)]
struct LoadedObject {
    /// The name it was asked for by (`DT_NEEDED` or the caller's path).
    name: String,
    /// The path it was read from.
    path: String,
    file: ObjectFile,
    reservation: PageRange,
    /// What to add to a link-time address: `reservation.start - image_start`.
    base: u64,
    dependencies: Vec<Dependency>,
    initialized: bool,
    /// Its TLS module, if it has `PT_TLS`.
    tls_module: Option<TlsModuleId>,
}

impl LoadedObject {
    /// This object's definition satisfying `name`/`version`, as its symbol index.
    fn find_definition(&self, name: &str, version: Option<&str>) -> Option<usize> {
        let symbols = &self.file.symbols;
        self.file
            .hash_table
            .lookup(name.as_bytes(), |index| {
                let index = index as usize;
                symbols.get(index).is_some_and(|symbol| {
                    symbol.defined
                        && symbol.binding != SymbolBinding::Local
                        && !matches!(symbol.kind, SymbolKind::Other)
                        && symbol.name == name
                        && self.file.versions.definition_matches(index, version)
                })
            })
            .map(|index| index as usize)
    }

    fn symbol_address(&self, index: usize) -> u64 {
        let symbol = &self.file.symbols[index];
        if symbol.absolute {
            symbol.value
        } else {
            self.base.wrapping_add(symbol.value)
        }
    }
}

/// Who defines a resolved symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Definer {
    /// The exported-symbols provider.
    Exports,
    /// The loaded object at this index.
    Object(usize),
    /// Nobody: an undefined weak reference (address 0).
    Nothing,
}

/// What a symbol reference resolved to.
#[derive(Debug, Clone, Copy)]
enum Resolution {
    /// An address (0 for an undefined weak symbol).
    Address {
        address: u64,
        size: Option<u64>,
        definer: Definer,
    },
    /// An ifunc in a loaded object: its resolver, run when relocating.
    IndirectFunction { resolver: u64 },
}

/// The resolutions of one object's symbol references, by symbol index.
#[derive(Debug)]
struct SymbolResolutions {
    /// For every relocation but `COPY`.
    ordinary: Vec<Option<Resolution>>,
    /// For `COPY`: the definition past the requester.
    copy_sources: Vec<Option<Resolution>>,
}

/// What initializing a loaded object runs, checked before anything runs.
#[derive(Debug)]
struct InitializationPlan {
    /// The objects it initializes, in order.
    objects: Vec<usize>,
    /// Their initializer functions, in the order they run.
    functions: Vec<u64>,
}

/// The linker over a memory, an exported-symbols provider, a library source and a
/// thread-local storage (none by default: objects with `PT_TLS` are then refused).
///
/// Dropping it releases every object's memory without running finalizers
/// ([`Linker::finalize`] runs them).
#[derive(Debug)]
pub struct Linker<
    M: Memory,
    E: SymbolProvider,
    L: LibrarySource,
    T: ThreadLocalStorage = NoThreadLocalStorage,
> {
    memory: M,
    exports: E,
    libraries: L,
    thread_local_storage: T,
    options: LinkerOptions,
    objects: Vec<LoadedObject>,
    /// Objects in the order their initializers ran (finalizers run in reverse).
    initialization_order: Vec<ObjectId>,
}

/// What [`Linker::object_info`] reports about a loaded object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The name it was loaded by.
    pub name: String,
    /// The path it was read from.
    pub path: String,
    /// Shared object or PIE.
    pub kind: ObjectKind,
    /// Where its lowest page is.
    pub base: VirtAddr,
    /// Its `PT_GNU_STACK` (an executable stack is refused at load).
    pub stack: StackRequirement,
    /// What each `DT_NEEDED` resolved to, in order.
    pub dependencies: Vec<Dependency>,
    /// What to add to its link-time addresses (`dl_iterate_phdr`'s `dlpi_addr`).
    pub load_bias: u64,
    /// Its program header table in memory (`dlpi_phdr`), if a segment maps it.
    pub program_headers: Option<VirtAddr>,
    /// The number of program headers (`dlpi_phnum`).
    pub program_header_count: u16,
    /// Its `.eh_frame_hdr` in memory (`PT_GNU_EH_FRAME`), for unwinders.
    pub eh_frame_header: Option<VirtAddr>,
}

impl<M: Memory, E: SymbolProvider, L: LibrarySource> Linker<M, E, L> {
    /// A linker with nothing loaded and no thread-local storage.
    pub fn new(memory: M, exports: E, libraries: L, options: LinkerOptions) -> Self {
        Linker::with_thread_local_storage(memory, exports, libraries, NoThreadLocalStorage, options)
    }
}

impl<M: Memory, E: SymbolProvider, L: LibrarySource, T: ThreadLocalStorage> Linker<M, E, L, T> {
    /// A linker with nothing loaded, whose objects' `PT_TLS` go to
    /// `thread_local_storage`.
    pub fn with_thread_local_storage(
        memory: M,
        exports: E,
        libraries: L,
        thread_local_storage: T,
        options: LinkerOptions,
    ) -> Self {
        Linker {
            memory,
            exports,
            libraries,
            thread_local_storage,
            options,
            objects: Vec::new(),
            initialization_order: Vec::new(),
        }
    }

    /// Releases the objects from `first` on (a failed load).
    fn unload_from(&mut self, first: usize) {
        while self.objects.len() > first {
            if let Some(object) = self.objects.pop() {
                if let Some(module) = object.tls_module {
                    self.thread_local_storage.unregister(module);
                }
                self.memory.release(object.reservation);
            }
        }
    }

    fn find_loaded(&self, name: &str) -> Option<ObjectId> {
        self.objects
            .iter()
            .position(|object| {
                object.name == name
                    || object.path == name
                    || object.file.soname.as_deref() == Some(name)
            })
            .map(ObjectId)
    }

    /// The paths to try for `name`, needed by `requester` (if any).
    fn candidates(&self, name: &str, requester: Option<&LoadedObject>) -> Vec<String> {
        if name.contains('/') {
            return vec![name.to_string()];
        }
        let mut directories: Vec<String> = Vec::new();
        if let Some(requester) = requester {
            let origin = requester
                .path
                .rsplit_once('/')
                .map(|(directory, _)| directory)
                .unwrap_or(".");
            let own = if requester.file.runpath.is_empty() {
                &requester.file.rpath
            } else {
                &requester.file.runpath
            };
            for directory in own {
                directories.push(
                    directory
                        .replace("${ORIGIN}", origin)
                        .replace("$ORIGIN", origin),
                );
            }
        }
        directories.extend(self.options.default_directories.iter().cloned());
        directories
            .iter()
            .map(|directory| alloc::format!("{}/{}", directory.trim_end_matches('/'), name))
            .collect()
    }

    fn read_first(
        &mut self,
        candidates: &[String],
        name: &str,
        needed_by: &str,
    ) -> Result<(String, L::File), LinkError> {
        for candidate in candidates {
            if let Some(bytes) = self.libraries.read(candidate) {
                return Ok((candidate.clone(), bytes));
            }
        }
        Err(LinkError::LibraryNotFound {
            name: name.to_string(),
            needed_by: needed_by.to_string(),
        })
    }

    /// Parses and maps `bytes` and, breadth first, every dependency not yet loaded.
    fn load_graph(&mut self, name: &str, path: &str, bytes: &[u8]) -> Result<ObjectId, LinkError> {
        let root = self.map_new(name, path, bytes)?;
        let mut next = root.0;
        while next < self.objects.len() {
            let needed = self.objects[next].file.needed.clone();
            let mut dependencies = Vec::with_capacity(needed.len());
            for dependency_name in &needed {
                if self
                    .options
                    .provided_libraries
                    .iter()
                    .any(|provided| provided == dependency_name)
                {
                    dependencies.push(Dependency::Provided);
                    continue;
                }
                if let Some(id) = self.find_loaded(dependency_name) {
                    dependencies.push(Dependency::Object(id));
                    continue;
                }
                let requester_name = self.objects[next].name.clone();
                let candidates = self.candidates(dependency_name, Some(&self.objects[next]));
                let mut found = None;
                for candidate in &candidates {
                    // Shared by path too: an object without DT_SONAME is known by its file.
                    if let Some(id) = self.find_loaded(candidate) {
                        found = Some(id);
                        break;
                    }
                    if let Some(dependency_bytes) = self.libraries.read(candidate) {
                        found = Some(self.map_new(
                            dependency_name,
                            candidate,
                            dependency_bytes.as_ref(),
                        )?);
                        break;
                    }
                }
                let id = found.ok_or_else(|| LinkError::LibraryNotFound {
                    name: dependency_name.clone(),
                    needed_by: requester_name.clone(),
                })?;
                dependencies.push(Dependency::Object(id));
            }
            self.objects[next].dependencies = dependencies;
            next += 1;
        }
        Ok(root)
    }

    /// Parses `bytes`, reserves its span, maps and fills its segments.
    fn map_new(&mut self, name: &str, path: &str, bytes: &[u8]) -> Result<ObjectId, LinkError> {
        let object_error = |error| LinkError::Object {
            name: name.to_string(),
            error,
        };
        let file = ObjectFile::parse(bytes).map_err(object_error)?;
        let memory_error = |error| LinkError::Memory {
            name: name.to_string(),
            error,
        };
        let reservation = self
            .memory
            .reserve(file.image_span as usize, file.alignment as usize)
            .map_err(memory_error)?;
        let base = reservation.start.as_u64().wrapping_sub(file.image_start);
        let mapped = Self::map_segments(&mut self.memory, &file, base, bytes, &reservation);
        if let Err(error) = mapped {
            self.memory.release(reservation);
            return Err(LinkError::Object {
                name: name.to_string(),
                error,
            });
        }
        let mut tls_module = None;
        if let Some(segment) = file.thread_local {
            let template = TlsTemplate {
                initialized_address: base.wrapping_add(segment.virtual_address),
                initialized_size: segment.file_size,
                block_size: segment.memory_size,
                alignment: segment.alignment,
            };
            match self.thread_local_storage.register(&template) {
                Ok(module) => tls_module = Some(module),
                Err(_) => {
                    self.memory.release(reservation);
                    return Err(object_error(ObjectError::ThreadLocalStorageUnsupported));
                }
            }
        }
        self.objects.push(LoadedObject {
            name: name.to_string(),
            path: path.to_string(),
            file,
            reservation,
            base,
            dependencies: Vec::new(),
            initialized: false,
            tls_module,
        });
        Ok(ObjectId(self.objects.len() - 1))
    }

    /// What initializing `root` runs: the objects not yet initialized among `root` and
    /// its dependencies, dependencies first (post-order over `DT_NEEDED`; a cycle is
    /// broken where it is re-entered), and their functions in order: a PIE root's
    /// `DT_PREINIT_ARRAY` first, then each object's `DT_INIT` and `DT_INIT_ARRAY`.
    /// Every function is read and checked here, so a bad array fails the load with
    /// nothing run.
    fn plan_initialization(&self, root: ObjectId) -> Result<InitializationPlan, LinkError> {
        let mut objects = Vec::new();
        let mut visited = vec![false; self.objects.len()];
        self.post_order(root.0, &mut visited, &mut objects);
        objects.retain(|&index| !self.objects[index].initialized);
        let mut functions = Vec::new();
        let root_object = &self.objects[root.0];
        if root_object.file.kind == ObjectKind::PositionIndependentExecutable
            && !root_object.initialized
        {
            functions.extend(self.functions(root.0, root_object.file.preinit_array)?);
        }
        for &index in &objects {
            let object = &self.objects[index];
            if let Some(init) = object.file.init {
                // DT_INIT was checked at parse time to lie in an executable segment.
                functions.push(object.base.wrapping_add(init));
            }
            functions.extend(self.functions(index, object.file.init_array)?);
        }
        Ok(InitializationPlan { objects, functions })
    }

    fn post_order(&self, index: usize, visited: &mut [bool], order: &mut Vec<usize>) {
        if visited[index] {
            return;
        }
        visited[index] = true;
        for dependency in &self.objects[index].dependencies {
            if let Dependency::Object(id) = dependency {
                self.post_order(id.0, visited, order);
            }
        }
        order.push(index);
    }

    /// The function pointers of `array` in object `index`, read from the relocated
    /// image, each checked to point into the object's code; 0 and -1 entries are
    /// skipped, as glibc does.
    fn functions(&self, index: usize, array: FunctionArray) -> Result<Vec<u64>, LinkError> {
        let object = &self.objects[index];
        let image = object.image();
        let error = |error| LinkError::Object {
            name: object.name.clone(),
            error,
        };
        let mut functions = Vec::with_capacity(array.count);
        for entry in 0..array.count as u64 {
            let function = image.read_u64(array.address + entry * 8).map_err(error)?;
            if function == 0 || function == u64::MAX {
                continue;
            }
            if !image.is_code(function) {
                return Err(error(ObjectError::BadFunctionArray));
            }
            functions.push(function);
        }
        Ok(functions)
    }

    /// The address of `name` (optionally `name@version`) defined by object `id`.
    /// An ifunc's address is its resolver's.
    pub fn symbol(&self, id: ObjectId, name: &str, version: Option<&str>) -> Option<VirtAddr> {
        let object = self.objects.get(id.0)?;
        object
            .find_definition(name, version)
            .map(|index| VirtAddr::new(object.symbol_address(index)))
    }

    /// The address of `name` in the first loaded object (in load order) defining it.
    pub fn lookup(&self, name: &str, version: Option<&str>) -> Option<VirtAddr> {
        (0..self.objects.len()).find_map(|index| self.symbol(ObjectId(index), name, version))
    }

    /// What the linker knows of a loaded object.
    pub fn object_info(&self, id: ObjectId) -> Option<ObjectInfo> {
        let object = self.objects.get(id.0)?;
        Some(ObjectInfo {
            name: object.name.clone(),
            path: object.path.clone(),
            kind: object.file.kind,
            base: object.reservation.start,
            stack: object.file.stack,
            dependencies: object.dependencies.clone(),
            load_bias: object.base,
            program_headers: object
                .file
                .program_headers
                .map(|address| VirtAddr::new(object.base.wrapping_add(address))),
            program_header_count: object.file.program_header_count,
            eh_frame_header: object
                .file
                .eh_frame_header
                .map(|address| VirtAddr::new(object.base.wrapping_add(address))),
        })
    }

    /// The loaded objects, in load order.
    pub fn objects(&self) -> impl Iterator<Item = ObjectId> + '_ {
        (0..self.objects.len()).map(ObjectId)
    }

    /// The order initializers ran in (and finalizers will run in reverse).
    pub fn initialization_order(&self) -> &[ObjectId] {
        &self.initialization_order
    }

    /// The memory implementation (for tests that inspect mappings).
    pub fn memory(&self) -> &M {
        &self.memory
    }
}

impl<M: Memory, E: SymbolProvider, L: LibrarySource, T: ThreadLocalStorage> Drop
    for Linker<M, E, L, T>
{
    fn drop(&mut self) {
        self.unload_from(0);
    }
}
