# CPACK_PRE_BUILD_SCRIPTS for the Debian packages: runs in cpack after it
# installed each component into the staging directory, and adds what only a
# .deb has, /usr/share/doc/<package>/copyright and changelog.Debian.gz
# (gzip -9n, as Debian policy wants), to each package.
# Input (from CPackConfig.cmake): CPACK_TEMPORARY_INSTALL_DIRECTORY,
# CPACK_COMPONENTS_ALL, CPACK_DEBIAN_<COMPONENT>_PACKAGE_NAME,
# CPACK_PACKAGING_INSTALL_PREFIX, CPACK_KEYWAY_DEBIAN_DIR.
find_program(KEYWAY_GZIP gzip REQUIRED)
foreach(component IN LISTS CPACK_COMPONENTS_ALL)
  string(TOUPPER "${component}" upper)
  set(package "${CPACK_DEBIAN_${upper}_PACKAGE_NAME}")
  if(NOT package)
    message(FATAL_ERROR "cpack_pre_build: no CPACK_DEBIAN_${upper}_PACKAGE_NAME")
  endif()
  set(docdir "${CPACK_TEMPORARY_INSTALL_DIRECTORY}/${component}${CPACK_PACKAGING_INSTALL_PREFIX}/share/doc/${package}")
  file(MAKE_DIRECTORY "${docdir}")
  file(COPY_FILE "${CPACK_KEYWAY_DEBIAN_DIR}/copyright" "${docdir}/copyright")
  file(CHMOD "${docdir}/copyright" PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
  execute_process(
    COMMAND "${KEYWAY_GZIP}" -9nc "${CPACK_KEYWAY_DEBIAN_DIR}/changelog"
    OUTPUT_FILE "${docdir}/changelog.Debian.gz"
    RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "cpack_pre_build: gzip ${CPACK_KEYWAY_DEBIAN_DIR}/changelog failed: ${rc}")
  endif()
  file(CHMOD "${docdir}/changelog.Debian.gz" PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
endforeach()
