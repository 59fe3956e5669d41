# Install rules and Debian packages (CPack, one .deb per component):
#   libmox0     runtime: libmox.so.0 (exports the C API and mox_plugin_v1)
#   libmox-dev  headers, libmox.so, libmox_loader.a, pkg-config (mox,
#               mox-loader), CMake package (find_package(mox) -> mox::mox,
#               mox::loader), the loader's sources for vendoring
#   mox-tools   mox_info, mox-perf, mox-run, mox-conformance
# Build them with `cpack --config build/CPackConfig.cmake` (see docs/abi.md).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(MOX_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/mox)

install(TARGETS mox EXPORT moxTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT runtime
                NAMELINK_COMPONENT dev)
install(TARGETS mox_loader EXPORT moxTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev
        PUBLIC_HEADER DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/mox COMPONENT dev)
install(FILES ${CMAKE_SOURCE_DIR}/include/mox/mox.h
              ${CMAKE_SOURCE_DIR}/include/mox/plugin_v1.h
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/mox COMPONENT dev)
install(FILES ${CMAKE_SOURCE_DIR}/plugin/mox_loader.c
              ${CMAKE_SOURCE_DIR}/plugin/mox_loader.h
        DESTINATION ${CMAKE_INSTALL_DATADIR}/mox/loader COMPONENT dev)
install(EXPORT moxTargets NAMESPACE mox:: DESTINATION ${MOX_CMAKE_DIR}
        COMPONENT dev)
configure_package_config_file(${CMAKE_SOURCE_DIR}/packaging/moxConfig.cmake.in
  ${CMAKE_BINARY_DIR}/packaging/moxConfig.cmake INSTALL_DESTINATION ${MOX_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_BINARY_DIR}/packaging/moxConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMajorVersion)
install(FILES ${CMAKE_BINARY_DIR}/packaging/moxConfig.cmake
              ${CMAKE_BINARY_DIR}/packaging/moxConfigVersion.cmake
        DESTINATION ${MOX_CMAKE_DIR} COMPONENT dev)
file(RELATIVE_PATH MOX_PC_TO_PREFIX
     /prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig /prefix)
foreach(pc mox mox-loader)
  configure_file(${CMAKE_SOURCE_DIR}/packaging/${pc}.pc.in
                 ${CMAKE_BINARY_DIR}/packaging/${pc}.pc @ONLY)
  install(FILES ${CMAKE_BINARY_DIR}/packaging/${pc}.pc
          DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig COMPONENT dev)
endforeach()

install(TARGETS mox_info mox-perf mox-conformance
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT tools)
install(PROGRAMS ${CMAKE_SOURCE_DIR}/tools/mox-run
        DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT tools)

# ---- CPack -------------------------------------------------------------
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME mox)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_VENDOR "mox")
set(CPACK_PACKAGE_CONTACT "mox developers <mox-dev@example.invalid>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
    "sparse hierarchical all-to-all and MoE dispatch/combine over shm + UCX")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_COMPONENTS_ALL runtime dev tools)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION libs)
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "https://example.invalid/mox")
# Dependencies on system libraries come from dpkg-shlibdeps; ours are
# declared by hand (libmox.so.0 is in this build, not in any package yet).
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS_PRIVATE_DIRS ${CMAKE_BINARY_DIR}/lib)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_NAME libmox0)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_SECTION libs)
# A shlibs file for packages that link libmox, and the ldconfig trigger.
set(CPACK_DEBIAN_RUNTIME_PACKAGE_GENERATE_SHLIBS ON)
set(CPACK_DEBIAN_DEV_PACKAGE_NAME libmox-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS "libmox0 (= ${PROJECT_VERSION})")
set(CPACK_DEBIAN_TOOLS_PACKAGE_NAME mox-tools)
set(CPACK_DEBIAN_TOOLS_PACKAGE_SECTION utils)
set(CPACK_DEBIAN_TOOLS_PACKAGE_DEPENDS
    "libmox0 (= ${PROJECT_VERSION}), python3, iproute2, util-linux")
set(CPACK_COMPONENT_RUNTIME_DESCRIPTION
    "mox runtime library\n libmox.so.0: the C API of mox.h and the plugin ABI table mox_plugin_v1.")
set(CPACK_COMPONENT_DEV_DESCRIPTION
    "mox development files\n Headers (mox.h, plugin_v1.h, mox_loader.h), pkg-config files, the CMake package (find_package(mox)) and the plugin loader.")
set(CPACK_COMPONENT_TOOLS_DESCRIPTION
    "mox tools\n mox_info, mox-perf, the mox-run launcher and mox-conformance.")
include(CPack)
