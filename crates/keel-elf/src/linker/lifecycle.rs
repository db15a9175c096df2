//! The unsafe entry points (loading runs the objects' code) and running
//! initializers and finalizers.

use alloc::vec::Vec;

use super::{InitializationPlan, LibrarySource, Linker, ObjectId};
use crate::LinkError;
use crate::image::{run_finalizer, run_initializer};
use crate::memory::Memory;
use crate::symbols::SymbolProvider;
use crate::tls::ThreadLocalStorage;

impl<M: Memory, E: SymbolProvider, L: LibrarySource, T: ThreadLocalStorage> Linker<M, E, L, T> {
    /// Loads `name` (a path, or a name searched in the default directories) with its
    /// dependencies, links it and runs the new objects' initializers, like
    /// `dlopen(name, RTLD_NOW | RTLD_GLOBAL)`. On error nothing new stays mapped.
    ///
    /// # Safety
    /// The objects are trusted code for this address space: their ifunc resolvers and
    /// initializers run here, with whatever the exports provide.
    pub unsafe fn load(&mut self, name: &str) -> Result<ObjectId, LinkError> {
        if let Some(id) = self.find_loaded(name) {
            return Ok(id);
        }
        let path_candidates = self.candidates(name, None);
        let (path, bytes) = self.read_first(&path_candidates, name, "")?;
        // SAFETY: forwarded from the caller.
        unsafe { self.load_bytes_at(name, &path, bytes.as_ref()) }
    }

    /// Like [`Linker::load`] for an object already in memory as `bytes`, known as
    /// `name`; its dependencies are searched as usual.
    ///
    /// # Safety
    /// As for [`Linker::load`].
    pub unsafe fn load_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<ObjectId, LinkError> {
        // SAFETY: forwarded from the caller.
        unsafe { self.load_bytes_at(name, name, bytes) }
    }

    unsafe fn load_bytes_at(
        &mut self,
        name: &str,
        path: &str,
        bytes: &[u8],
    ) -> Result<ObjectId, LinkError> {
        let first_new = self.objects.len();
        let result = self.load_graph(name, path, bytes).and_then(|root| {
            let resolutions = self.resolve_new(first_new)?;
            // SAFETY: forwarded from the caller.
            unsafe { self.relocate_new(first_new, &resolutions) }?;
            let plan = if self.options.run_code {
                Some(self.plan_initialization(root)?)
            } else {
                None
            };
            Ok((root, plan))
        });
        match result {
            Ok((root, plan)) => {
                if let Some(plan) = plan {
                    // SAFETY: forwarded from the caller; every new object is linked and
                    // the plan's functions were checked.
                    unsafe { self.initialize(plan) };
                }
                Ok(root)
            }
            Err(error) => {
                self.unload_from(first_new);
                Err(error)
            }
        }
    }

    /// Runs a plan from [`Linker::plan_initialization`].
    unsafe fn initialize(&mut self, plan: InitializationPlan) {
        for &index in &plan.objects {
            self.objects[index].initialized = true;
            self.initialization_order.push(ObjectId(index));
        }
        for function in plan.functions {
            // SAFETY: each function is in its object's code (checked when planned); the
            // objects are linked and their dependencies come first in the plan;
            // `load`'s caller trusts the objects' code.
            unsafe { run_initializer(function) };
        }
    }

    /// Runs the finalizers of every initialized object, in the reverse of the order
    /// their initializers ran: each object's `DT_FINI_ARRAY` (last entry first), then
    /// its `DT_FINI`. Every function is checked before the first one runs.
    ///
    /// # Safety
    /// As for [`Linker::load`]; the objects' functions are not in use any more.
    pub unsafe fn finalize(&mut self) -> Result<(), LinkError> {
        let mut plan = Vec::new();
        for &id in self.initialization_order.iter().rev() {
            let object = &self.objects[id.0];
            let mut functions = self.functions(id.0, object.file.fini_array)?;
            functions.reverse();
            plan.extend(functions);
            if let Some(fini) = object.file.fini {
                // DT_FINI was checked at parse time to lie in an executable segment.
                plan.push(object.base.wrapping_add(fini));
            }
        }
        for id in core::mem::take(&mut self.initialization_order) {
            self.objects[id.0].initialized = false;
        }
        for function in plan {
            // SAFETY: each function is in its object's code (checked when planned), the
            // object was initialized and is still mapped; the caller trusts the code and
            // no longer uses the objects.
            unsafe { run_finalizer(function) };
        }
        Ok(())
    }
}
