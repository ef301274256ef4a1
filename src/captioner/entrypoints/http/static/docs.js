// Starts Swagger UI on /docs. A file, not an inline script, so the page's CSP can forbid those.
"use strict";
window.addEventListener("DOMContentLoaded", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.specUrl,
    domNode: root,
    deepLinking: true,
    validatorUrl: null, // the default badge would call an outside validator service
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
