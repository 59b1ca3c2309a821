/** OHIF configuration used by the end-to-end test: one DICOMweb data source, the dicomgw gateway.
 *  __DICOMWEB_ROOT__, __OMIT_QUOTATION__ and __OIDC__ (OHIF's own `oidc` list, or null) are filled in
 *  by tests/e2e/test_ohif.py. */
window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  defaultDataSourceName: 'dicomgw',
  investigationalUseDialog: { option: 'never' },
  oidc: __OIDC__,
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'dicomgw',
      configuration: {
        friendlyName: 'dicomgw',
        name: 'dicomgw',
        wadoUriRoot: '__DICOMWEB_ROOT__',
        qidoRoot: '__DICOMWEB_ROOT__',
        wadoRoot: '__DICOMWEB_ROOT__',
        qidoSupportsIncludeField: true,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        bulkDataURI: { enabled: true },
        omitQuotationForMultipartRequest: __OMIT_QUOTATION__,
      },
    },
  ],
};
